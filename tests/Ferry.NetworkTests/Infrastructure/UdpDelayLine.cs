using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// A UDP forwarder that holds every datagram for a fixed time in each direction, in order: the delay half of netem
/// for kernels built without sch_netem. Clients send to <see cref="LocalEndPoint"/>; replies go to the last client seen.
/// </summary>
internal sealed class UdpDelayLine : IAsyncDisposable
{
    private readonly Socket _front;
    private readonly Socket _back;
    private readonly IPEndPoint _target;
    private readonly TimeSpan _delay;
    private readonly CancellationTokenSource _cts = new();
    private readonly Task[] _loops;
    private volatile IPEndPoint? _client;
    private long _forwarded;

    public UdpDelayLine(IPAddress bindTo, IPEndPoint target, TimeSpan delay)
    {
        _target = target;
        _delay = delay;
        _front = Bind(bindTo);
        _back = Bind(bindTo);
        var toTarget = Channel.CreateUnbounded<Held>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var toClient = Channel.CreateUnbounded<Held>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        _loops =
        [
            Task.Run(() => ReceiveAsync(_front, toTarget.Writer, rememberSender: true)),
            Task.Run(() => ReceiveAsync(_back, toClient.Writer, rememberSender: false)),
            Task.Run(() => ReleaseAsync(toTarget.Reader, _back, () => _target)),
            Task.Run(() => ReleaseAsync(toClient.Reader, _front, () => _client)),
        ];
    }

    public IPEndPoint LocalEndPoint => (IPEndPoint)_front.LocalEndPoint!;

    public long Forwarded => Interlocked.Read(ref _forwarded);

    /// <summary>Why a loop stopped early, if one did; shown by tests that fail while the line was in use.</summary>
    public string? Fault { get; private set; }

    private static Socket Bind(IPAddress address)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 8 << 20, SendBufferSize = 8 << 20 };
        socket.Bind(new IPEndPoint(address, 0));
        return socket;
    }

    private async Task ReceiveAsync(Socket socket, ChannelWriter<Held> output, bool rememberSender)
    {
        var from = new IPEndPoint(IPAddress.Any, 0);
        try
        {
            while (true)
            {
                var buffer = ArrayPool<byte>.Shared.Rent(65536);
                SocketReceiveFromResult result;
                try
                {
                    result = await socket.ReceiveFromAsync(buffer, SocketFlags.None, from, _cts.Token).ConfigureAwait(false);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset)
                {
                    // An ICMP error for an earlier send (peer not bound yet or gone); the socket itself is fine.
                    ArrayPool<byte>.Shared.Return(buffer);
                    continue;
                }

                if (rememberSender)
                {
                    _client = (IPEndPoint)result.RemoteEndPoint;
                }

                output.TryWrite(new Held(buffer, result.ReceivedBytes, Stopwatch.GetTimestamp() + (long)(_delay.TotalSeconds * Stopwatch.Frequency)));
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
            output.TryComplete();
        }
#pragma warning disable CA1031 // Reported through Fault.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Fault ??= e.ToString();
            output.TryComplete();
        }
    }

    private async Task ReleaseAsync(ChannelReader<Held> input, Socket socket, Func<IPEndPoint?> destination)
    {
        try
        {
            await foreach (var held in input.ReadAllAsync(_cts.Token).ConfigureAwait(false))
            {
                var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), held.Due);
                if (wait > TimeSpan.Zero)
                {
                    await Task.Delay(wait, _cts.Token).ConfigureAwait(false);
                }

                if (destination() is { } to)
                {
                    try
                    {
                        await socket.SendToAsync(held.Buffer.AsMemory(0, held.Length), SocketFlags.None, to, _cts.Token).ConfigureAwait(false);
                        Interlocked.Increment(ref _forwarded);
                    }
                    catch (SocketException)
                    {
                        // Dropped, as a router would (an iptables DROP in OUTPUT surfaces here as EPERM).
                    }
                }

                ArrayPool<byte>.Shared.Return(held.Buffer);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
            // Shutting down.
        }
#pragma warning disable CA1031 // Reported through Fault.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Fault ??= e.ToString();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cts.CancelAsync();
        _front.Dispose();
        _back.Dispose();
        await Task.WhenAll(_loops).WaitAsync(TimeSpan.FromSeconds(10));
        _cts.Dispose();
    }

    private readonly record struct Held(byte[] Buffer, int Length, long Due);
}
