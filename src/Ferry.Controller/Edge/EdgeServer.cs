using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Edge;

/// <summary>
/// A controller edge (<c>ferry controller --role edge</c>): faces connectors, clients, relays and operators on the public
/// side, holds no database, and passes each connection unchanged (TLS and all) over a link the core dialed in. The core
/// keeps several idle links open to every edge, so no connection waits for a dial.
/// </summary>
public sealed partial class EdgeServer : IAsyncDisposable
{
    // How long a daemon's connection waits for a link before it is closed (the daemon then tries its next controller address).
    private static readonly TimeSpan LinkWait = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan AnswerWait = TimeSpan.FromSeconds(5);

    private readonly Socket _public;
    private readonly Socket _links;
    private readonly byte[] _secret;
    private readonly ILogger _logger;
    private readonly Channel<IdleLink> _idle = Channel.CreateUnbounded<IdleLink>();
    private int _live;

    private EdgeServer(Socket publicSocket, Socket links, byte[] secret, ILogger logger)
    {
        _public = publicSocket;
        _links = links;
        _secret = secret;
        _logger = logger;
    }

    /// <summary>Where daemons connect.</summary>
    public IPEndPoint PublicEndPoint => (IPEndPoint)_public.LocalEndPoint!;

    /// <summary>Where the core's links connect.</summary>
    public IPEndPoint LinkEndPoint => (IPEndPoint)_links.LocalEndPoint!;

    /// <summary>Idle links from the core ready for a daemon's connection now.</summary>
    public int LiveLinks => Volatile.Read(ref _live);

    /// <summary>Binds both listeners; fails with the reason when an address is taken or wrong.</summary>
    public static EdgeServer Bind(IPEndPoint publicEndPoint, IPEndPoint linkEndPoint, byte[] secret, ILogger logger)
    {
        var publicSocket = Listen(publicEndPoint, "--listen");
        try
        {
            return new EdgeServer(publicSocket, Listen(linkEndPoint, "--link-listen"), secret, logger);
        }
        catch
        {
            publicSocket.Dispose();
            throw;
        }
    }

    private static Socket Listen(IPEndPoint endpoint, string option)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endpoint);
            socket.Listen(512);
            return socket;
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ArgumentException($"{option} {endpoint}: cannot listen there ({e.Message})", e);
        }
    }

    /// <summary>Serves until <paramref name="ct"/> is cancelled.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        LogServing(_logger, PublicEndPoint.ToString(), LinkEndPoint.ToString());
        await Task.WhenAll(AcceptAsync(_links, socket => AuthenticateLinkAsync(socket, ct), ct), AcceptAsync(_public, socket => ServeAsync(socket, ct), ct));
    }

    /// <summary>Accepts on <paramref name="listener"/> until stopped, handing each connection to <paramref name="handle"/> on its own task.</summary>
    private static async Task AcceptAsync(Socket listener, Func<Socket, Task> handle, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(ct);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionAborted or SocketError.ConnectionReset)
            {
                continue;
            }
            _ = Task.Run(() => handle(socket), CancellationToken.None);
        }
    }

    private async Task AuthenticateLinkAsync(Socket socket, CancellationToken ct)
    {
        var from = socket.RemoteEndPoint?.ToString() ?? "?";
        try
        {
            EdgeLinkProtocol.EnableKeepAlive(socket);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(AnswerWait);
            var challenge = EdgeLinkProtocol.NewChallenge();
            await socket.SendAsync(challenge, SocketFlags.None, timeout.Token);
            var answer = new byte[32];
            if (!await EdgeLinkProtocol.ReadExactlyAsync(socket, answer, timeout.Token) || !EdgeLinkProtocol.Verify(challenge, answer, _secret))
            {
                LogLinkRefused(_logger, from);
                socket.Dispose();
                return;
            }
            await socket.SendAsync(EdgeLinkProtocol.AcceptedByte.ToArray(), SocketFlags.None, timeout.Token);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
        {
            socket.Dispose();
            return;
        }
        var link = new IdleLink(socket);
        if (Interlocked.Increment(ref _live) == 1)
        {
            LogCoreLinked(_logger, from);
        }
        // The core never speaks first on a link, so this read ends only when the link dies (or, once taken, with the core's first bytes).
        _ = link.Pending.ContinueWith(_ =>
        {
            if (link.TryTake())
            {
                link.Socket.Dispose();
                if (Interlocked.Decrement(ref _live) == 0)
                {
                    LogCoreGone(_logger);
                }
            }
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        _idle.Writer.TryWrite(link);
    }

    private async Task ServeAsync(Socket daemon, CancellationToken ct)
    {
        var remote = (IPEndPoint)daemon.RemoteEndPoint!;
        daemon.NoDelay = true;
        IdleLink? link = null;
        using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            timeout.CancelAfter(LinkWait);
            try
            {
                while (link is null)
                {
                    var next = await _idle.Reader.ReadAsync(timeout.Token);
                    if (next.TryTake())
                    {
                        link = next;
                        Interlocked.Decrement(ref _live);
                    }
                }
            }
            catch (OperationCanceledException)
            {
                if (!ct.IsCancellationRequested)
                {
                    LogNoLink(_logger, remote.ToString(), LinkWait.TotalSeconds);
                }
                daemon.Dispose();
                return;
            }
        }
        try
        {
            await link.Socket.SendAsync(EdgeLinkProtocol.Announce(remote), SocketFlags.None, ct);
            // Either direction failing ends both: closing the sockets unblocks the other pump.
            await Task.WhenAll(PumpAsync(daemon, link.Socket, ct), PumpFromLinkAsync(link, daemon, ct));
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
        {
            // One side went away; both are closed below.
        }
        finally
        {
            daemon.Dispose();
            link.Socket.Dispose();
        }
    }

    private static async Task PumpAsync(Socket from, Socket to, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            while (true)
            {
                var n = await from.ReceiveAsync(buffer, SocketFlags.None, ct);
                if (n == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }
                await SendAllAsync(to, buffer.AsMemory(0, n), ct);
            }
        }
        catch
        {
            from.Dispose();
            to.Dispose();
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static async Task PumpFromLinkAsync(IdleLink link, Socket to, CancellationToken ct)
    {
        try
        {
            // The first bytes from the core were read by the idle watch.
            var n = await link.Pending;
            if (n == 0)
            {
                to.Shutdown(SocketShutdown.Send);
                return;
            }
            await SendAllAsync(to, link.Buffer.AsMemory(0, n), ct);
        }
        catch
        {
            link.Socket.Dispose();
            to.Dispose();
            throw;
        }
        await PumpAsync(link.Socket, to, ct);
    }

    private static async Task SendAllAsync(Socket socket, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (!data.IsEmpty)
        {
            var sent = await socket.SendAsync(data, SocketFlags.None, ct);
            data = data[sent..];
        }
    }

    public ValueTask DisposeAsync()
    {
        _public.Dispose();
        _links.Dispose();
        while (_idle.Reader.TryRead(out var link))
        {
            link.Socket.Dispose();
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>An authenticated link waiting for a daemon's connection, with the read that watches it.</summary>
    private sealed class IdleLink
    {
        private int _taken;

        public IdleLink(Socket socket)
        {
            Socket = socket;
            Pending = socket.ReceiveAsync(Buffer, SocketFlags.None);
        }

        public Socket Socket { get; }
        public byte[] Buffer { get; } = new byte[16 * 1024];
        public Task<int> Pending { get; }

        /// <summary>Claims the link, once: for a daemon's connection, or for disposal when it died idle.</summary>
        public bool TryTake() => Interlocked.Exchange(ref _taken, 1) == 0;
    }

    [LoggerMessage(170, LogLevel.Information, "Edge serving daemons on {Public}; core links on {Links}")]
    private static partial void LogServing(ILogger logger, string @public, string links);

    [LoggerMessage(171, LogLevel.Information, "Core linked from {From}")]
    private static partial void LogCoreLinked(ILogger logger, string from);

    [LoggerMessage(172, LogLevel.Warning, "No core link left: daemons' connections wait for the core to dial in again")]
    private static partial void LogCoreGone(ILogger logger);

    [LoggerMessage(173, LogLevel.Warning, "Refused a core link from {From}: it does not know the edge secret")]
    private static partial void LogLinkRefused(ILogger logger, string from);

    [LoggerMessage(174, LogLevel.Warning, "Closed the connection from {From}: no core link within {Seconds} s (is the core running, with this edge in its --edge list?)")]
    private static partial void LogNoLink(ILogger logger, string from, double seconds);
}
