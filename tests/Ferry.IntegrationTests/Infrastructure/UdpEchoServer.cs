using System.Net;
using System.Net.Sockets;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A private UDP service for tests: sends every datagram back to its sender, and counts what it received.</summary>
public sealed class UdpEchoServer : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _echoing;
    private int _received;

    public UdpEchoServer()
    {
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Port = ((IPEndPoint)_socket.LocalEndPoint!).Port;
        _echoing = Task.Run(EchoAsync);
    }

    public int Port { get; }

    /// <summary>Datagrams received so far.</summary>
    public int Received => Volatile.Read(ref _received);

    private async Task EchoAsync()
    {
        var buffer = new byte[65536];
        var any = new IPEndPoint(IPAddress.Any, 0);
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                var received = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any, _stop.Token);
                Interlocked.Increment(ref _received);
                await _socket.SendToAsync(buffer.AsMemory(0, received.ReceivedBytes), SocketFlags.None, received.RemoteEndPoint, _stop.Token);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused)
            {
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _socket.Dispose();
        await _echoing.WaitAsync(TimeSpan.FromSeconds(5));
        _stop.Dispose();
    }
}
