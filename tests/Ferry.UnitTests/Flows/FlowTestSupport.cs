using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Ferry.Client.Access;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

/// <summary>A real TCP server on loopback that runs one handler per connection until disposed.</summary>
internal sealed class LoopbackServer : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<int, Task> _connections = new();
    private readonly Task _accepting;
    private int _next;

    public LoopbackServer(Func<NetworkStream, CancellationToken, Task> handler, IPAddress? address = null)
    {
        address ??= IPAddress.Loopback;
        _listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(address, 0));
        _listener.Listen(2048);
        EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        _accepting = AcceptAsync(handler);
    }

    public IPEndPoint EndPoint { get; }

    public int Port => EndPoint.Port;

    /// <summary>Echoes everything, and half-closes when the client does.</summary>
    public static LoopbackServer Echo(IPAddress? address = null) => new(async (stream, ct) =>
    {
        await stream.CopyToAsync(stream, ct);
        stream.Socket.Shutdown(SocketShutdown.Send);
    }, address);

    /// <summary>Reads until the client half-closes, then answers the SHA-256 of what it read and closes.</summary>
    public static LoopbackServer HashAfterEnd() => new(async (stream, ct) =>
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = await stream.ReadAsync(buffer, ct)) > 0)
        {
            sha.AppendData(buffer, 0, read);
        }
        await stream.WriteAsync(sha.GetHashAndReset(), ct);
        stream.Socket.Shutdown(SocketShutdown.Send);
    });

    /// <summary>Answers any request head with a small HTTP response.</summary>
    public static LoopbackServer Http(string body) => new(async (stream, ct) =>
    {
        var head = await FlowTestSupport.ReadHeadAsync(stream, ct);
        var bytes = Encoding.UTF8.GetBytes(body);
        var response = $"HTTP/1.1 200 OK\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\nX-Request-Line: {head.Split("\r\n")[0]}\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(response), ct);
        await stream.WriteAsync(bytes, ct);
        stream.Socket.Shutdown(SocketShutdown.Send);
    });

    private async Task AcceptAsync(Func<NetworkStream, CancellationToken, Task> handler)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            var id = Interlocked.Increment(ref _next);
            _connections[id] = ServeAsync(id, socket, handler);
        }
    }

    private async Task ServeAsync(int id, Socket socket, Func<NetworkStream, CancellationToken, Task> handler)
    {
        await Task.Yield();
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            await handler(stream, _stop.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away; the test that caused it checks what it needs.
        }
        finally
        {
            _connections.TryRemove(id, out _);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        await Task.WhenAll([_accepting, .. _connections.Values]).WaitAsync(TimeSpan.FromSeconds(5));
        _stop.Dispose();
    }
}

/// <summary>The stand-in for a QUIC connection to a connector: each flow is a duplex pipe pair served by a real <see cref="FlowHandler"/>.</summary>
internal sealed class InMemoryOpener(FlowHandler handler, string identity, Func<AccessTable> access) : IFlowOpener, IAsyncDisposable
{
    private readonly ConcurrentBag<(CancellationTokenSource Revoke, Task Served)> _flows = [];
    private readonly ConcurrentQueue<CancellationTokenSource> _opened = new();
    private readonly (UdpDatagramMux Client, UdpDatagramMux Connector) _datagrams = InMemoryDatagrams.CreatePair();
    private long _nextStreamId = -4;

    /// <summary>Revoke tokens of flows in the order they were opened.</summary>
    public IReadOnlyCollection<CancellationTokenSource> Opened => _opened;

    public int OpenCount => _flows.Count;

    public async Task<OpenedFlow> OpenAsync(ResourceGrant resource, FlowHeader header, EarlyApplicationData? early, CancellationToken cancellationToken)
    {
        var (near, far) = DuplexStreams.CreatePair();
        var revoke = new CancellationTokenSource();
        var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, identity, access(), revoke.Token);
        _flows.Add((revoke, served));
        _opened.Enqueue(revoke);
        await header.WriteAsync(near, cancellationToken);
        FlowReply reply;
        if (early is null)
        {
            reply = await FlowReply.ReadAsync(near, cancellationToken);
        }
        else
        {
            await early.AttachAsync(near, cancellationToken);
            reply = await FlowReply.ReadAsync(near, cancellationToken);
            await early.DetachAsync(reply.IsOk);
        }
        return reply.IsOk ? new OpenedFlow(reply, near, DuplexStreams.CompleteWrites) : new OpenedFlow(reply, near);
    }

    /// <summary>UDP flows share one in-memory datagram link, as they share a QUIC connection; each gets the next client stream id.</summary>
    public async Task<OpenedUdpFlow> OpenUdpAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
    {
        var id = Interlocked.Add(ref _nextStreamId, 4);
        var (near, far) = DuplexStreams.CreatePair();
        var revoke = new CancellationTokenSource();
        var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, identity, access(), revoke.Token, datagrams: _datagrams.Connector, streamId: id);
        _flows.Add((revoke, served));
        _opened.Enqueue(revoke);
        var (reply, flow) = await _datagrams.Client.OpenAsync(id, near, DuplexStreams.CompleteWrites, header, cancellationToken);
        return new OpenedUdpFlow(reply, flow);
    }

    /// <summary>UDP flows the connector side serves now.</summary>
    public int LiveUdpFlows => _datagrams.Connector.Count;

    /// <summary>Completes when every flow opened so far has ended on the connector side.</summary>
    public Task AllServed => Task.WhenAll(_flows.Select(f => f.Served));

    public async ValueTask DisposeAsync()
    {
        foreach (var (revoke, _) in _flows)
        {
            await revoke.CancelAsync();
        }
        await Task.WhenAll(_flows.Select(f => f.Served)).WaitAsync(TimeSpan.FromSeconds(5));
        foreach (var (revoke, _) in _flows)
        {
            revoke.Dispose();
        }
    }
}

/// <summary>A resolver that answers from a function, for names that must fail, hang or point at loopback.</summary>
internal sealed class StubResolver(Func<string, CancellationToken, Task<NameResolution>> resolve) : INameResolver
{
    public Task<NameResolution> ResolveAsync(string name, CancellationToken cancellationToken) => resolve(name, cancellationToken);
}

internal static class FlowTestSupport
{
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    public static async Task<Socket> ConnectAsync(IPEndPoint endPoint, CancellationToken cancellationToken)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endPoint, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken);
        return socket;
    }

    /// <summary>Runs the SOCKS5 no-auth greeting and a CONNECT; returns the reply code (the stream stays open for data on 0x00).</summary>
    public static async Task<byte> Socks5ConnectAsync(NetworkStream stream, string host, int port, CancellationToken cancellationToken, byte command = 1)
    {
        await stream.WriteAsync(new byte[] { 5, 1, 0 }, cancellationToken);
        var method = new byte[2];
        await stream.ReadExactlyAsync(method, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken);
        Assert.Equal(new byte[] { 5, 0 }, method);

        var request = new List<byte> { 5, command, 0 };
        if (IPAddress.TryParse(host, out var ip) && (host.Contains(':', StringComparison.Ordinal) || host.Count(c => c == '.') == 3))
        {
            request.Add(ip.AddressFamily == AddressFamily.InterNetwork ? (byte)1 : (byte)4);
            request.AddRange(ip.GetAddressBytes());
        }
        else
        {
            request.Add(3);
            request.Add((byte)host.Length);
            request.AddRange(Encoding.ASCII.GetBytes(host));
        }
        var portBytes = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(portBytes, (ushort)port);
        request.AddRange(portBytes);
        await stream.WriteAsync(request.ToArray(), cancellationToken);

        var reply = new byte[10];
        await stream.ReadExactlyAsync(reply, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken);
        Assert.Equal(5, reply[0]);
        return reply[1];
    }

    /// <summary>Sends "CONNECT target"; returns the status code, the head, and the body (read to its Content-Length).</summary>
    public static async Task<(int Status, string Head, string Body)> HttpConnectAsync(NetworkStream stream, string target, CancellationToken cancellationToken, string method = "CONNECT")
    {
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"{method} {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"), cancellationToken);
        var head = await ReadHeadAsync(stream, cancellationToken);
        var status = int.Parse(head.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        var lengthLine = head.Split("\r\n").FirstOrDefault(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase));
        var body = "";
        if (lengthLine is not null)
        {
            var bytes = new byte[int.Parse(lengthLine["Content-Length:".Length..].Trim(), System.Globalization.CultureInfo.InvariantCulture)];
            await stream.ReadExactlyAsync(bytes, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken);
            body = Encoding.UTF8.GetString(bytes);
        }
        return (status, head, body);
    }

    /// <summary>Reads byte by byte up to the blank line, so nothing after the head is consumed.</summary>
    public static async Task<string> ReadHeadAsync(Stream stream, CancellationToken cancellationToken)
    {
        var head = new List<byte>();
        var one = new byte[1];
        while (head.Count < 16 * 1024)
        {
            if (await stream.ReadAsync(one, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken) == 0)
            {
                throw new IOException($"the connection ended inside the head: {Encoding.ASCII.GetString(head.ToArray())}");
            }
            head.Add(one[0]);
            if (head.Count >= 4 && head[^4] == '\r' && head[^3] == '\n' && head[^2] == '\r' && head[^1] == '\n')
            {
                return Encoding.ASCII.GetString(head.ToArray());
            }
        }
        throw new IOException("the head is too long");
    }

    /// <summary>Sends <paramref name="payload"/> while reading, half-closes, and returns everything read until the other side's end.</summary>
    public static async Task<byte[]> ExchangeAsync(Stream stream, Func<Stream, ValueTask> completeWrites, byte[] payload, CancellationToken cancellationToken)
    {
        var sending = Task.Run(async () =>
        {
            for (var offset = 0; offset < payload.Length; offset += 64 * 1024)
            {
                await stream.WriteAsync(payload.AsMemory(offset, Math.Min(64 * 1024, payload.Length - offset)), cancellationToken);
            }
            await stream.FlushAsync(cancellationToken);
            await completeWrites(stream);
        }, cancellationToken);
        var received = await ReadToEndAsync(stream, cancellationToken);
        await sending.WaitAsync(Bound, cancellationToken);
        return received;
    }

    public static async Task<byte[]> ReadToEndAsync(Stream stream, CancellationToken cancellationToken)
    {
        using var received = new MemoryStream();
        var buffer = new byte[64 * 1024];
        int read;
        while ((read = await stream.ReadAsync(buffer, cancellationToken).AsTask().WaitAsync(Bound, cancellationToken)) > 0)
        {
            received.Write(buffer, 0, read);
        }
        return received.ToArray();
    }

    /// <summary>A port on 127.0.0.1 where nothing listens (bound, then released).</summary>
    public static int ClosedPort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    public static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
