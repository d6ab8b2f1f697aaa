using System.Net.Sockets;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>Split tunnelling for UDP: a connected UDP socket from this device to a destination no resource covers.</summary>
internal sealed class DirectUdpFlow : IUdpFlow
{
    private readonly Socket _socket;
    private readonly TaskCompletionSource<UdpFlowEnd> _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _lastActivity = Environment.TickCount64;
    private long _packetsSent;
    private long _bytesSent;
    private long _packetsReceived;
    private long _bytesReceived;
    private long _dropped;

    private DirectUdpFlow(Socket socket) => _socket = socket;

    public static async Task<OpenedUdpFlow> OpenAsync(string host, int port, CancellationToken cancellationToken)
    {
        var destination = FlowHeader.FormatHostPort(host, port);
        // Dual mode reaches IPv4 and IPv6 destinations; connecting resolves the name and fixes the one peer replies may come from.
        var socket = new Socket(SocketType.Dgram, ProtocolType.Udp);
        try
        {
            await socket.ConnectAsync(host, port, cancellationToken);
            return new OpenedUdpFlow(new FlowReply(FlowStatus.Ok, $"UDP directly to {destination}"), new DirectUdpFlow(socket));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            var status = e.SocketErrorCode is SocketError.HostNotFound or SocketError.NoData ? FlowStatus.NameNotFound : FlowStatus.Unreachable;
            return OpenedUdpFlow.Refused(status, $"direct UDP to {destination} failed: {e.Message}");
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public Task<UdpFlowEnd> Ended => _ended.Task;

    public UdpFlowCounters Counters => new(
        Interlocked.Read(ref _packetsSent), Interlocked.Read(ref _bytesSent), Interlocked.Read(ref _packetsReceived), Interlocked.Read(ref _bytesReceived), 0, 0, Interlocked.Read(ref _dropped));

    public TimeSpan Idle => TimeSpan.FromMilliseconds(Math.Max(0, Environment.TickCount64 - Interlocked.Read(ref _lastActivity)));

    public async ValueTask<bool> SendAsync(ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (_ended.Task.IsCompleted)
        {
            return false;
        }
        Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);
        try
        {
            await _socket.SendAsync(payload, SocketFlags.None, cancellationToken);
            Interlocked.Increment(ref _packetsSent);
            Interlocked.Add(ref _bytesSent, payload.Length);
        }
        catch (SocketException)
        {
            // An ICMP error left from an earlier packet: this one is lost, as UDP loses packets.
            Interlocked.Increment(ref _dropped);
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        return true;
    }

    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (true)
        {
            try
            {
                var length = await _socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
                Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);
                Interlocked.Increment(ref _packetsReceived);
                Interlocked.Add(ref _bytesReceived, length);
                return length;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset or SocketError.HostUnreachable or SocketError.NetworkUnreachable)
            {
                Interlocked.Increment(ref _dropped);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                _ended.TrySetResult(new UdpFlowEnd(ByPeer: false, FlowStatus.Unreachable, $"the direct UDP socket failed: {e.Message}"));
                return -1;
            }
        }
    }

    public ValueTask DisposeAsync()
    {
        _ended.TrySetResult(new UdpFlowEnd(ByPeer: false, FlowStatus.Ok, "closed"));
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
