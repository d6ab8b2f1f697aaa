using System.Buffers;
using System.Net.Sockets;
using System.Threading.Channels;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>
/// One application conversation carried by one UDP flow (a UDP forward's source address, a SOCKS5 association's destination):
/// payloads posted while the flow opens wait in a small queue, then go out; payloads from the flow go back to the application.
/// Ends when the flow ends, when nothing moves for the idle timeout, or when disposed.
/// </summary>
internal sealed class UdpFlowSession : IAsyncDisposable
{
    /// <summary>Payloads waiting to be sent; the oldest are dropped beyond this, as a socket's send buffer would.</summary>
    private const int QueueLength = 256;

    // A refused session stays a moment, dropping what comes, so a chatty application does not open (and log) one refused flow per packet.
    private static readonly TimeSpan RefusalHold = TimeSpan.FromSeconds(2);

    private readonly Channel<(byte[] Buffer, int Length)> _outbound;
    private readonly CancellationTokenSource _stop;
    private readonly string _kind;
    private readonly string _destination;
    private readonly TimeSpan _idleTimeout;
    private readonly ILogger _logger;
    private long _dropped;
    private int _disposed;

    public UdpFlowSession(
        string kind, string destination, Func<CancellationToken, Task<OpenedUdpFlow>> open, Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> toApplication,
        TimeSpan idleTimeout, ILogger logger, CancellationToken cancellationToken)
    {
        _kind = kind;
        _destination = destination;
        _idleTimeout = idleTimeout;
        _logger = logger;
        _stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        _outbound = Channel.CreateBounded<(byte[] Buffer, int Length)>(
            new BoundedChannelOptions(QueueLength) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true },
            dropped =>
            {
                ArrayPool<byte>.Shared.Return(dropped.Buffer);
                Interlocked.Increment(ref _dropped);
            });
        Completion = Task.Run(() => RunAsync(open, toApplication, _stop.Token), CancellationToken.None);
    }

    /// <summary>Completes when the session has ended and released its flow.</summary>
    public Task Completion { get; }

    /// <summary>Queues a payload for the flow (copied into a pooled buffer); false when the session has ended, so the caller starts a new one.</summary>
    public bool Post(ReadOnlySpan<byte> payload)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, payload.Length));
        payload.CopyTo(buffer);
        if (_outbound.Writer.TryWrite((buffer, payload.Length)))
        {
            return true;
        }
        ArrayPool<byte>.Shared.Return(buffer);
        return false;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _stop.CancelAsync();
        await Completion.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (Completion.IsCompleted)
        {
            _stop.Dispose();
        }
    }

    private async Task RunAsync(Func<CancellationToken, Task<OpenedUdpFlow>> open, Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> toApplication, CancellationToken cancellationToken)
    {
        OpenedUdpFlow? opened = null;
        try
        {
            opened = await open(cancellationToken);
            if (opened.Flow is not { } flow)
            {
                // The opener logged the refusal with its reason; what is posted meanwhile is dropped when the hold ends.
                await Task.Delay(RefusalHold, cancellationToken);
                return;
            }
            using var inner = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var send = SendAsync(flow, inner.Token);
            // The application's socket gone or full loses the packet, as UDP would; the flow goes on.
            var receive = UdpFlowDelivery.DeliverAllAsync(flow, toApplication, null, inner.Token);
            var idle = WaitForIdleAsync(flow, inner.Token);
            await Task.WhenAny(send, receive, idle, flow.Ended);
            string end;
            if (cancellationToken.IsCancellationRequested)
            {
                end = "closed here";
            }
            else if (flow.Ended.IsCompleted)
            {
                end = $"ended {await flow.Ended}";
            }
            else if (idle.IsCompletedSuccessfully)
            {
                end = $"no packets either way for {_idleTimeout.TotalSeconds:0.###} s";
            }
            else
            {
                end = "closed";
            }
            _outbound.Writer.TryComplete();
            await inner.CancelAsync();
            await Task.WhenAll(send, receive, idle).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            var counters = flow.Counters;
            ClientMetrics.BytesMoved(counters.BytesSent, counters.BytesReceived);
            UdpLog.FlowClosed(_logger, _kind, _destination, end, (counters with { Dropped = counters.Dropped + Interlocked.Read(ref _dropped) }).ToString());
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopped while opening or holding a refusal.
        }
        finally
        {
            _outbound.Writer.TryComplete();
            while (_outbound.Reader.TryRead(out var item))
            {
                ArrayPool<byte>.Shared.Return(item.Buffer);
            }
            if (opened is not null)
            {
                await opened.DisposeAsync();
            }
        }
    }

    private async Task SendAsync(IUdpFlow flow, CancellationToken cancellationToken)
    {
        while (await _outbound.Reader.WaitToReadAsync(cancellationToken))
        {
            while (_outbound.Reader.TryRead(out var item))
            {
                try
                {
                    if (!await flow.SendAsync(item.Buffer.AsMemory(0, item.Length), cancellationToken))
                    {
                        return;
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(item.Buffer);
                }
            }
        }
    }

    private async Task WaitForIdleAsync(IUdpFlow flow, CancellationToken cancellationToken)
    {
        while (true)
        {
            var remaining = _idleTimeout - flow.Idle;
            if (remaining <= TimeSpan.Zero)
            {
                return;
            }
            await Task.Delay(remaining + TimeSpan.FromMilliseconds(1), cancellationToken);
        }
    }
}

/// <summary>Routes a UDP destination and opens its flow, as <see cref="LoopbackProxy"/> does for TCP: through Ferry, directly, or refused with the reason logged.</summary>
internal static class UdpFlowRouter
{
    public static async Task<OpenedUdpFlow> OpenAsync(
        ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions options, string kind, string host, int port, ILogger logger, CancellationToken cancellationToken)
    {
        var destination = FlowHeader.FormatHostPort(host, port);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.OpenTimeout);
        var route = await routes.MatchWhenKnownAsync(host, port, FlowProtocol.Udp, options.OpenTimeout, timeout.Token);
        cancellationToken.ThrowIfCancellationRequested();
        if (route.Kind == RouteKind.Refused)
        {
            LoopbackProxy.Log.FlowRefused(logger, kind, destination, route.Status, route.Reason);
            return OpenedUdpFlow.Refused(route.Status, route.Reason);
        }
        OpenedUdpFlow flow;
        try
        {
            flow = route.Kind == RouteKind.Direct
                ? await DirectUdpFlow.OpenAsync(host, port, timeout.Token)
                : await opener.OpenUdpAsync(route.Resource!, new FlowHeader(FlowProtocol.Udp, host, port), timeout.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            flow = OpenedUdpFlow.Refused(FlowStatus.Timeout, $"opening the UDP flow to {destination} took longer than {options.OpenTimeout.TotalSeconds:0.#} s");
        }
        catch (Exception e) when (e is IOException or SocketException or FlowProtocolException or ObjectDisposedException)
        {
            flow = OpenedUdpFlow.Refused(FlowStatus.Unreachable, $"the UDP flow to {destination} failed before the connector answered: {e.Message}");
        }
        if (flow.Reply.IsOk)
        {
            LoopbackProxy.Log.FlowOpened(logger, kind, destination, route.Kind == RouteKind.Direct ? "direct" : route.Resource!.Name);
        }
        else
        {
            LoopbackProxy.Log.FlowRefused(logger, kind, destination, flow.Reply.Status, flow.Reply.Message);
        }
        return flow;
    }
}
