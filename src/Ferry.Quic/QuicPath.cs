using System.Buffers;
using System.Net;
using System.Security.Cryptography;
using System.Threading.Channels;
using Ferry.Quic.Internal;

namespace Ferry.Quic;

/// <summary>A network path a connection can use: a UDP 4-tuple, or a virtual path carried by a relay link.</summary>
public interface IQuicPath
{
    /// <summary>The local address QUIC sees for this path (synthetic for a relay path).</summary>
    IPEndPoint LocalEndPoint { get; }

    /// <summary>The remote address QUIC sees for this path (synthetic for a relay path).</summary>
    IPEndPoint RemoteEndPoint { get; }
}

/// <summary>Where a connection's packets for one local address go: a UDP socket or a relay link.</summary>
internal interface IPacketSink
{
    void EnqueueSend(byte[] buffer, int length, NativeAddress to, TaskCompletionSource? sent);

    /// <summary>Sends the packets of one flush, in order; the memory is only valid during the call.</summary>
    void SendBatch(ReadOnlySpan<OutgoingPacket> packets);
}

/// <summary>Helpers for sinks.</summary>
internal static class PacketSinks
{
    /// <summary>Copies each packet into a pooled buffer and queues it, for sinks that send one at a time.</summary>
    public static unsafe void CopyEach(IPacketSink sink, ReadOnlySpan<OutgoingPacket> packets)
    {
        foreach (var p in packets)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(p.Length);
            new ReadOnlySpan<byte>((void*)p.Data, p.Length).CopyTo(buffer);
            sink.EnqueueSend(buffer, p.Length, p.To, null);
        }
    }
}

/// <summary>Implementation side of <see cref="IQuicPath"/>; only Ferry's own path types qualify.</summary>
internal interface IQuicPathInternal : IQuicPath
{
    QuicEndpoint Endpoint { get; }

    NativeAddress Local { get; }

    NativeAddress Remote { get; }
}

/// <summary>A UDP 4-tuple: an endpoint's socket and a remote address.</summary>
public sealed class UdpQuicPath : IQuicPathInternal
{
    internal UdpQuicPath(QuicEndpoint endpoint, NativeAddress local, NativeAddress remote)
    {
        Endpoint = endpoint;
        Local = local;
        Remote = remote;
    }

    /// <inheritdoc/>
    public IPEndPoint LocalEndPoint => Local.EndPoint;

    /// <inheritdoc/>
    public IPEndPoint RemoteEndPoint => Remote.EndPoint;

    /// <summary>The endpoint whose socket this path uses.</summary>
    public QuicEndpoint Endpoint { get; }

    internal NativeAddress Local { get; }

    internal NativeAddress Remote { get; }

    NativeAddress IQuicPathInternal.Local => Local;

    NativeAddress IQuicPathInternal.Remote => Remote;
}

/// <summary>
/// A virtual path whose datagrams travel over something else, for example a relay link. QUIC sees a pair of
/// synthetic addresses; <see cref="Deliver"/> feeds datagrams that arrived over the link into the endpoint, and
/// the send delegate carries outgoing ones. One instance per side of the link.
/// </summary>
public sealed class RelayQuicPath : IQuicPathInternal, IPacketSink, IAsyncDisposable
{
    private static int s_next;
    private readonly Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> _send;
    private readonly Channel<(byte[] Buffer, int Length, TaskCompletionSource? Sent)> _queue =
        Channel.CreateBounded<(byte[], int, TaskCompletionSource?)>(new BoundedChannelOptions(4096) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });

    private readonly CancellationTokenSource _cts = new();
    private readonly Task _sendLoop;

    internal RelayQuicPath(QuicEndpoint endpoint, Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> send)
    {
        Endpoint = endpoint;
        _send = send;

        // Synthetic unique-local IPv6 addresses: they only have to be distinct for ngtcp2's path comparison.
        int id = Interlocked.Increment(ref s_next);
        Span<byte> bytes = stackalloc byte[16];
        RandomNumberGenerator.Fill(bytes);
        bytes[0] = 0xfd;
        Local = new NativeAddress(new IPEndPoint(new IPAddress(bytes), 1 + (id % 65000))) { Sink = this };
        bytes[15] ^= 0xff;
        Remote = new NativeAddress(new IPEndPoint(new IPAddress(bytes), 1 + (id % 65000)));
        _sendLoop = Task.Run(SendLoopAsync);
    }

    /// <inheritdoc/>
    public IPEndPoint LocalEndPoint => Local.EndPoint;

    /// <inheritdoc/>
    public IPEndPoint RemoteEndPoint => Remote.EndPoint;

    /// <summary>The endpoint whose connections this path serves.</summary>
    public QuicEndpoint Endpoint { get; }

    internal NativeAddress Local { get; }

    internal NativeAddress Remote { get; }

    NativeAddress IQuicPathInternal.Local => Local;

    NativeAddress IQuicPathInternal.Remote => Remote;

    /// <summary>Hands a datagram that arrived over the relay link to QUIC (copied; the span may be reused).</summary>
    public void Deliver(ReadOnlySpan<byte> datagram) => Endpoint.DeliverFromPath(datagram, Local, Remote);

    internal void Deliver(ReadOnlySpan<byte> datagram, List<QuicConnection> deferred) => Endpoint.DeliverFromPath(datagram, Local, Remote, deferred);

    /// <summary>Stops the send loop; queued datagrams are dropped.</summary>
    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _cts.CancelAsync().ConfigureAwait(false);
        await _sendLoop.WaitAsync(TimeSpan.FromSeconds(2)).ContinueWith(static _ => { }, TaskScheduler.Default).ConfigureAwait(false);
        _cts.Dispose();
    }

    void IPacketSink.EnqueueSend(byte[] buffer, int length, NativeAddress to, TaskCompletionSource? sent)
    {
        if (!_queue.Writer.TryWrite((buffer, length, sent)))
        {
            // Full or closed: behave like a congested network and drop.
            ArrayPool<byte>.Shared.Return(buffer);
            sent?.TrySetResult();
        }
    }

    void IPacketSink.SendBatch(ReadOnlySpan<OutgoingPacket> packets) => PacketSinks.CopyEach(this, packets);

    private async Task SendLoopAsync()
    {
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            while (reader.TryRead(out var item))
            {
                try
                {
                    await _send(item.Buffer.AsMemory(0, item.Length), _cts.Token).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The link failed or we are shutting down; QUIC treats it as loss.
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(item.Buffer);
                    item.Sent?.TrySetResult();
                }
            }
        }
    }
}

/// <summary>
/// Datagrams from relay paths handed to QUIC together (see <see cref="QuicEndpoint.BeginRelayDelivery"/>): the connections
/// they reach flush once, on <see cref="Dispose"/>, instead of once per datagram.
/// </summary>
public ref struct RelayDeliveryBatch
{
    private readonly QuicEndpoint _endpoint;
    private List<QuicConnection>? _deferred;

    internal RelayDeliveryBatch(QuicEndpoint endpoint, List<QuicConnection> deferred)
    {
        _endpoint = endpoint;
        _deferred = deferred;
    }

    /// <summary>Hands a datagram that arrived over <paramref name="path"/> to QUIC (copied; the span may be reused).</summary>
    public readonly void Deliver(RelayQuicPath path, ReadOnlySpan<byte> datagram)
    {
        ArgumentNullException.ThrowIfNull(path);
        ObjectDisposedException.ThrowIf(_deferred is null, typeof(RelayDeliveryBatch));
        if (path.Endpoint != _endpoint)
        {
            throw new ArgumentException("The path must come from the endpoint that started this batch.", nameof(path));
        }

        path.Deliver(datagram, _deferred);
    }

    /// <summary>Lets every connection the batch reached answer.</summary>
    public void Dispose()
    {
        if (_deferred is { } deferred)
        {
            _deferred = null;
            _endpoint.EndRelayDelivery(deferred);
        }
    }
}
