using System.Net;
using System.Net.Sockets;

namespace Ferry.Client.Access;

/// <summary>A loopback entry point applications use (SOCKS5, HTTP CONNECT, TCP and UDP port forwards), as the client daemon runs it.</summary>
public interface ILoopbackListener : IAsyncDisposable
{
    /// <summary>What it is, for logs and status: "socks5", "http-connect", "forward HOST:PORT", "forward HOST:PORT/udp".</summary>
    string Kind { get; }

    /// <summary>Where it is bound, once started.</summary>
    IPEndPoint LocalEndPoint { get; }

    /// <summary>Binds 127.0.0.1 on the configured port and starts serving; throws <see cref="System.Net.Sockets.SocketException"/> when the port is taken.</summary>
    Task StartAsync(CancellationToken cancellationToken);
}

/// <summary>The socket every loopback listener binds.</summary>
internal static class LoopbackSocket
{
    /// <summary>
    /// A socket bound to 127.0.0.1:<paramref name="port"/> (0: any free port). Loopback only: the local listeners carry no
    /// authentication of their own, so nothing off this host may reach them. Throws <see cref="SocketException"/> when the port is taken.
    /// </summary>
    public static Socket Bind(SocketType type, int port, int backlog = 0)
    {
        var socket = new Socket(AddressFamily.InterNetwork, type, type == SocketType.Stream ? ProtocolType.Tcp : ProtocolType.Udp);
        try
        {
            socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
            if (type == SocketType.Stream)
            {
                socket.Listen(backlog);
            }
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
