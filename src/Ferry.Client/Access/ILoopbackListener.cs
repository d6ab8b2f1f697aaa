using System.Net;

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
