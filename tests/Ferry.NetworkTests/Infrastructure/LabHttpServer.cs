using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// An HTTP/1.x server for namespace tests: answers every request with a body computed from the caller's address, and
/// remembers every caller. Its listening socket is made on the constructing thread, so constructed inside a namespace
/// (<see cref="NetNamespace.Create{T}"/>) it listens there.
/// </summary>
internal sealed class LabHttpServer : IDisposable
{
    private readonly Socket _listener;
    private readonly Func<IPEndPoint, string> _body;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<IPEndPoint> _peers = [];
    private readonly Lock _gate = new();

    public LabHttpServer(IPEndPoint endPoint, Func<IPEndPoint, string> body)
    {
        _body = body;
        _listener = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(endPoint);
        _listener.Listen(16);
        _ = Task.Run(AcceptAsync);
    }

    /// <summary>A server whose every answer is <paramref name="body"/>.</summary>
    public static LabHttpServer Fixed(IPEndPoint endPoint, string body) => new(endPoint, _ => body);

    /// <summary>A server that answers with the IP address the request came from, to show where traffic leaves.</summary>
    public static LabHttpServer PeerEcho(IPEndPoint endPoint) => new(endPoint, peer => peer.Address.ToString());

    public IReadOnlyList<IPEndPoint> Peers
    {
        get
        {
            lock (_gate)
            {
                return [.. _peers];
            }
        }
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket connection;
            try
            {
                connection = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            var peer = (IPEndPoint)connection.RemoteEndPoint!;
            lock (_gate)
            {
                _peers.Add(peer);
            }
            _ = Task.Run(() => ServeAsync(connection, peer));
        }
    }

    private async Task ServeAsync(Socket connection, IPEndPoint peer)
    {
        using (connection)
        using (var bound = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
        {
            bound.CancelAfter(TimeSpan.FromSeconds(30));
            try
            {
                // Read the request head (up to the blank line), then answer and close.
                var head = new List<byte>();
                var buffer = new byte[4096];
                while (head.ToArray().AsSpan().IndexOf("\r\n\r\n"u8) < 0)
                {
                    var n = await connection.ReceiveAsync(buffer, SocketFlags.None, bound.Token);
                    if (n == 0)
                    {
                        return;
                    }
                    head.AddRange(buffer.AsSpan(0, n));
                }
                var body = Encoding.UTF8.GetBytes(_body(peer));
                byte[] response = [.. Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"), .. body];
                await connection.SendAsync(response, SocketFlags.None, bound.Token);
                connection.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                // The peer went away or the server is stopping.
            }
        }
    }

    public void Dispose()
    {
        // _stop is cancelled, not disposed: connections still closing read its token.
        _stop.Cancel();
        _listener.Dispose();
    }
}
