using System.Buffers;
using System.Net.Sockets;

namespace Ferry.Core.Flows;

/// <summary>Which side of a flow failed first, in the manner of YARP's ForwarderError.</summary>
public enum FlowCopyError
{
    /// <summary>Both directions ended cleanly (each read side reached its end and the other side's writes were completed).</summary>
    None,

    /// <summary>Reading from the client side failed.</summary>
    ClientRead,

    /// <summary>Writing to the client side (or completing its writes) failed.</summary>
    ClientWrite,

    /// <summary>Reading from the upstream side failed.</summary>
    UpstreamRead,

    /// <summary>Writing to the upstream side (or completing its writes) failed.</summary>
    UpstreamWrite,

    /// <summary>The caller's token was cancelled (a revoked or stopped flow).</summary>
    Canceled,
}

/// <summary>How a copy ended: the first failure (if any), its exception, and the bytes carried each way.</summary>
public readonly record struct FlowCopyResult(FlowCopyError Error, long BytesToUpstream, long BytesToClient, Exception? Exception);

/// <summary>Copies bytes both ways between the two sides of a flow with pooled buffers (held only while data moves), carrying half-close across.</summary>
/// <remarks>
/// When one side's read ends, the other side's writes are completed (TCP FIN, QUIC stream FIN) and the other direction keeps going
/// until it ends too. A failure in either direction, or the caller's token, stops both directions and disposes both streams, which
/// is how a revoked flow closes. After a clean end the caller still owns (and disposes) both streams. Both streams must honour
/// cancellation tokens on pending reads and writes (NetworkStream, pipe streams and QUIC streams do).
/// </remarks>
public static class FlowCopier
{
    /// <summary>Bytes per direction in flight; a buffer is rented only while data moves, so idle flows hold none.</summary>
    public const int BufferSize = 32 * 1024;

    public static async Task<FlowCopyResult> CopyAsync(
        Stream client,
        Func<Stream, ValueTask> completeClientWrites,
        Stream upstream,
        Func<Stream, ValueTask> completeUpstreamWrites,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(completeClientWrites);
        ArgumentNullException.ThrowIfNull(upstream);
        ArgumentNullException.ThrowIfNull(completeUpstreamWrites);

        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var state = new CopyState(abort);
        var toUpstream = PumpAsync(client, upstream, completeUpstreamWrites, FlowCopyError.ClientRead, FlowCopyError.UpstreamWrite, state);
        var toClient = PumpAsync(upstream, client, completeClientWrites, FlowCopyError.UpstreamRead, FlowCopyError.ClientWrite, state);
        var bytes = await Task.WhenAll(toUpstream, toClient);

        // The internal abort only fires after a failure is recorded, so a cancellation without one came from the caller.
        var error = state.Error != FlowCopyError.None ? state.Error : state.Canceled ? FlowCopyError.Canceled : FlowCopyError.None;
        if (error != FlowCopyError.None)
        {
            await client.DisposeAsync();
            await upstream.DisposeAsync();
        }
        return new FlowCopyResult(error, bytes[0], bytes[1], state.Exception);
    }

    /// <summary>A completeWrites callback for a <see cref="NetworkStream"/>: shuts down the socket's sending side, so the peer reads its end.</summary>
    public static ValueTask ShutdownSocketSend(Stream stream)
    {
        if (stream is NetworkStream network)
        {
            try
            {
                network.Socket.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
                // The peer is already gone; the read side will report it.
            }
            catch (ObjectDisposedException)
            {
                // The flow was torn down concurrently.
            }
        }
        return ValueTask.CompletedTask;
    }

    private static async Task<long> PumpAsync(
        Stream source,
        Stream destination,
        Func<Stream, ValueTask> completeWrites,
        FlowCopyError readError,
        FlowCopyError writeError,
        CopyState state)
    {
        var token = state.Abort.Token;
        long total = 0;
        while (true)
        {
            int read;
            byte[]? buffer = null;
            try
            {
                try
                {
                    // Waits for data without a buffer: most flows are idle most of the time, and a buffer held across
                    // that wait would cost every open flow BufferSize per direction (64 KiB per flow), not only busy ones.
                    _ = await source.ReadAsync(Memory<byte>.Empty, token);
                    buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
                    read = await source.ReadAsync(buffer.AsMemory(0, BufferSize), token);
                }
                catch (Exception e) when (IsCopyFailure(e))
                {
                    state.Fail(readError, e);
                    return total;
                }

                try
                {
                    if (read == 0)
                    {
                        await completeWrites(destination);
                        return total;
                    }
                    await destination.WriteAsync(buffer.AsMemory(0, read), token);
                    await destination.FlushAsync(token);
                }
                catch (Exception e) when (IsCopyFailure(e))
                {
                    state.Fail(writeError, e);
                    return total;
                }
            }
            finally
            {
                if (buffer is not null)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
            total += read;
        }
    }

    private static bool IsCopyFailure(Exception e)
        => e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or InvalidOperationException;

    private sealed class CopyState(CancellationTokenSource abort)
    {
        private int _failed;

        public CancellationTokenSource Abort { get; } = abort;

        public FlowCopyError Error { get; private set; }

        public Exception? Exception { get; private set; }

        public bool Canceled { get; private set; }

        public void Fail(FlowCopyError error, Exception exception)
        {
            if (Abort.IsCancellationRequested)
            {
                // Either the caller cancelled, or the other direction failed first and aborted this one: not a failure of its own.
                Canceled = true;
                return;
            }
            if (Interlocked.Exchange(ref _failed, 1) == 0)
            {
                Error = error;
                Exception = exception;
            }
            try
            {
                Abort.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // The copy already finished.
            }
        }
    }
}
