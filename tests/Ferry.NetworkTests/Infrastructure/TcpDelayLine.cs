using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// A TCP forwarder inside a namespace that holds every chunk for a fixed time in each direction, in order: the delay half
/// of netem for one TCP service (a relay's link port) on kernels built without sch_netem.
/// </summary>
internal sealed class TcpDelayLine : IAsyncDisposable
{
    private readonly string _ns;
    private readonly Socket _listener;
    private readonly IPEndPoint _target;
    private readonly TimeSpan _delay;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _sockets = [];
    private readonly Lock _gate = new();
    private readonly Task _accept;
    private long _connections;

    private TcpDelayLine(string ns, IPEndPoint listen, IPEndPoint target, TimeSpan delay)
    {
        _ns = ns;
        _target = target;
        _delay = delay;
        _listener = NetNamespace.Create(ns, () =>
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(listen);
            socket.Listen(64);
            return socket;
        });
        _accept = Task.Run(AcceptAsync);
    }

    /// <summary>Listens on <paramref name="listen"/> in namespace <paramref name="ns"/> and dials <paramref name="target"/> from there for each connection.</summary>
    public static TcpDelayLine Start(string ns, IPEndPoint listen, IPEndPoint target, TimeSpan delay) => new(ns, listen, target, delay);

    public long Connections => Interlocked.Read(ref _connections);

    /// <summary>Why a connection was cut by the line itself rather than by an end, if one was; shown in failure diagnostics.</summary>
    public string? Fault { get; private set; }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket inbound;
            try
            {
                inbound = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            Interlocked.Increment(ref _connections);
            _ = Task.Run(() => ServeAsync(inbound));
        }
    }

    private async Task ServeAsync(Socket inbound)
    {
        Track(inbound);
        Socket outbound;
        try
        {
            // A socket belongs to the namespace it was made in: the dial must leave from the line's namespace.
            outbound = NetNamespace.Create(_ns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true });
            Track(outbound);
            inbound.NoDelay = true;
            await outbound.ConnectAsync(_target, _stop.Token);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or IOException or TimeoutException)
        {
            Fault ??= $"dialling {_target}: {e.Message}";
            inbound.Dispose();
            return;
        }
        // A half-close passes through; an error in either direction resets both ends, as a broken link would.
        await Task.WhenAll(PipeAsync(inbound, outbound), PipeAsync(outbound, inbound));
        inbound.Dispose();
        outbound.Dispose();
    }

    private void Track(Socket socket)
    {
        lock (_gate)
        {
            _sockets.Add(socket);
        }
    }

    private async Task PipeAsync(Socket from, Socket to)
    {
        var held = Channel.CreateUnbounded<(byte[] Data, int Length, long Due)>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var release = Task.Run(async () =>
        {
            try
            {
                await foreach (var (data, length, due) in held.Reader.ReadAllAsync(_stop.Token))
                {
                    var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), due);
                    if (wait > TimeSpan.Zero)
                    {
                        await Task.Delay(wait, _stop.Token);
                    }
                    if (length == 0)
                    {
                        to.Shutdown(SocketShutdown.Send);
                        return;
                    }
                    await to.SendAsync(data.AsMemory(0, length), SocketFlags.None, _stop.Token);
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
            {
                // The receiving end is gone: the sending end must learn it too.
                from.Dispose();
                to.Dispose();
            }
        });
        try
        {
            int n;
            do
            {
                var buffer = new byte[64 * 1024];
                n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                held.Writer.TryWrite((buffer, n, Stopwatch.GetTimestamp() + (long)(_delay.TotalSeconds * Stopwatch.Frequency)));
            }
            while (n > 0);
            held.Writer.TryComplete();
            await release;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            held.Writer.TryComplete();
            from.Dispose();
            to.Dispose();
            await release;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        lock (_gate)
        {
            foreach (var socket in _sockets)
            {
                socket.Dispose();
            }
        }
        await _accept.WaitAsync(TimeSpan.FromSeconds(10));
        _stop.Dispose();
    }
}
