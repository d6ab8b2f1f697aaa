using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Ferry.Client.Access;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.IntegrationTests.Infrastructure;
using Ferry.UnitTests.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// The client's local proxies driven over loopback with mutated requests, several at a time, while a well-behaved application
/// keeps using them. Every hostile connection must end (answered, refused or closed) within a bound; none may crash its handler
/// (the proxies log that as an error); and the well-behaved application must keep being served throughout.
/// </summary>
public sealed class ProxyFuzzTests : FlowTestBase
{
    private static readonly LoopbackProxyOptions Options = new() { HandshakeTimeout = TimeSpan.FromSeconds(1), OpenTimeout = TimeSpan.FromSeconds(2), MaxConnections = 256 };

    /// <summary>Longest a hostile connection may take to end: the handshake and open timeouts, and slack for a loaded machine.</summary>
    private static readonly TimeSpan EndBound = TimeSpan.FromSeconds(10);

    /// <summary>Connections that connect and never send, held open beside the storm.</summary>
    private const int IdleConnections = 100;

    /// <summary>Longest one well-behaved exchange may take while the storm goes on.</summary>
    private static readonly TimeSpan ServedBound = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task Socks5_refuses_or_closes_every_mutated_request_and_keeps_serving_others()
    {
        // A generous connect bound: the well-behaved client is judged by ServedBound, not by a fast-test timeout under a storm.
        await using var harness = await ProxyHarness.StartAsync(Token, connectTimeout: ServedBound);
        var errors = new ErrorLog();
        await using var socks = new Socks5Server(harness.Routes, harness.Opener, Options, errors);
        await socks.StartAsync(Token);
        byte[] port = [(byte)(harness.Echo.Port >> 8), (byte)harness.Echo.Port];
        byte[][] seeds =
        [
            .. Fuzzer.Corpus("socks5"),
            [5, 1, 0, 5, 1, 0, 3, 9, .. "echo.test"u8, .. port, .. "hello"u8],
            [5, 2, 2, 0, 5, 1, 0, 1, 127, 0, 0, 1, .. port, .. "hello"u8],
        ];
        await StormAsync("socks5", socks, seeds, Fuzzer.Seed(0x50C50001), errors, async (stream, ct) =>
        {
            Assert.Equal(0x00, await FlowTestSupport.Socks5ConnectAsync(stream, "echo.test", harness.Echo.Port, ct));
        }, reply => reply.Length == 0 || reply[0] == 5, request => Math.Min(request.Length, 12)); // No request is complete in 12 bytes: the greeting takes 3, the request at least 10.
    }

    [Fact]
    public async Task Http_connect_refuses_or_closes_every_mutated_request_and_keeps_serving_others()
    {
        // A generous connect bound: the well-behaved client is judged by ServedBound, not by a fast-test timeout under a storm.
        await using var harness = await ProxyHarness.StartAsync(Token, connectTimeout: ServedBound);
        var errors = new ErrorLog();
        await using var http = new HttpConnectProxy(harness.Routes, harness.Opener, Options, errors);
        await http.StartAsync(Token);
        var echo = harness.Echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        byte[][] seeds =
        [
            .. Fuzzer.Corpus("http-connect"),
            Encoding.ASCII.GetBytes($"CONNECT echo.test:{echo} HTTP/1.1\r\nHost: echo.test:{echo}\r\n\r\nhello"),
            Encoding.ASCII.GetBytes($"CONNECT [::1]:{echo} HTTP/1.1\r\n\r\n"),
            Encoding.ASCII.GetBytes($"CONNECT 127.0.0.1:{echo} HTTP/1.0\r\nUser-Agent: x\r\n\r\n"),
        ];
        int[] statuses = [200, 400, 403, 405, 408, 431, 502, 504];
        await StormAsync("http-connect", http, seeds, Fuzzer.Seed(0x477E0001), errors, async (stream, ct) =>
        {
            var (status, _, body) = await FlowTestSupport.HttpConnectAsync(stream, $"echo.test:{echo}", ct);
            Assert.True(status == 200, body);
        }, reply =>
        {
            if (reply.Length == 0)
            {
                return true;
            }
            var head = Encoding.Latin1.GetString(reply, 0, Math.Min(reply.Length, 12));
            return head.StartsWith("HTTP/1.1 ", StringComparison.Ordinal) && head.Length >= 12
                && int.TryParse(head.AsSpan(9, 3), System.Globalization.CultureInfo.InvariantCulture, out var code) && statuses.Contains(code);
        }, request => request.AsSpan().IndexOf("\r\n\r\n"u8) is >= 0 and var end ? end + 3 : request.Length);
    }

    [Fact]
    public async Task Socks5_udp_association_drops_mutated_datagrams_and_keeps_relaying()
    {
        await using var echo = new UdpEchoServer();
        var loopback = new ResourceGrant("rs_lo", "loopback", "nw_1", "127.0.0.1", "none", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var apps = new ResourceGrant("rs_apps", "apps", "nw_1", "*.test", "none", "all");
        var access = new AccessTable([new(ProxyHarness.Me, loopback), new(ProxyHarness.Me, apps)]);
        var handler = new FlowHandler(new StubResolver((_, _) => Task.FromResult(NameResolution.Found([IPAddress.Loopback]))));
        await using var opener = new InMemoryOpener(handler, ProxyHarness.Me, () => access);
        var errors = new ErrorLog();
        // Few flows per association: mutated ports would otherwise open a socket per destination.
        await using var socks = new Socks5Server(new ClientRoutes([loopback, apps]), opener, new LoopbackProxyOptions { MaxConnections = 32 }, errors);
        await socks.StartAsync(Token);

        using var control = await FlowTestSupport.ConnectAsync(socks.LocalEndPoint, Token);
        await using var controlStream = new NetworkStream(control);
        await controlStream.WriteAsync(new byte[] { 5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0 }, Token);
        var reply = new byte[12];
        await controlStream.ReadExactlyAsync(reply, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        var relay = new IPEndPoint(IPAddress.Loopback, BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(10)));
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        var header = new byte[Socks5UdpHeader.MaxLength];
        var headerLength = Socks5UdpHeader.Write(header, "127.0.0.1", echo.Port);
        byte[][] seeds = [.. Fuzzer.Corpus("socks5-udp"), [.. header.AsSpan(0, headerLength), .. "ping"u8]];
        var seed = Fuzzer.Seed(0x50C50002);
        var random = new Random(seed);
        // Datagrams cost a round trip through the kernel: a tenth of FERRY_FUZZ_ITERATIONS.
        var iterations = Fuzzer.Iterations(30_000) / 10;
        Fuzzer.Log($"socks5-udp association: seed {seed} (replay with FERRY_FUZZ_SEED={seed}), {iterations} datagrams");
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < iterations; i++)
        {
            var datagram = Fuzzer.Next(random, seeds);
            if (datagram.Length is > 0 and < 65_000)
            {
                await udp.SendToAsync(datagram, SocketFlags.None, relay, Token);
            }
            // Every few hundred, the genuine application must still get its echo back.
            if (i % 500 == 499 || i == iterations - 1)
            {
                await RoundTripAsync(udp, relay, [.. header.AsSpan(0, headerLength)], i);
            }
        }
        Fuzzer.Log($"socks5-udp association: {iterations} datagrams in {watch.ElapsedMilliseconds} ms; the echo kept coming back");
        errors.AssertNone();
    }

    private async Task RoundTripAsync(Socket udp, IPEndPoint relay, byte[] header, int after)
    {
        var payload = Encoding.ASCII.GetBytes($"genuine {after}");
        var buffer = new byte[70_000];
        // Loopback UDP may drop under the storm: a few tries, each bounded.
        for (var attempt = 0; attempt < 5; attempt++)
        {
            await udp.SendToAsync((byte[])[.. header, .. payload], SocketFlags.None, relay, Token);
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(Token);
            wait.CancelAfter(TimeSpan.FromSeconds(1));
            try
            {
                while (true)
                {
                    var length = await udp.ReceiveAsync(buffer, SocketFlags.None, wait.Token);
                    if (Socks5UdpHeader.TryParse(buffer.AsSpan(0, length), out _, out _, out var offset, out _) && buffer.AsSpan(offset, length - offset).SequenceEqual(payload))
                    {
                        return;
                    }
                }
            }
            catch (OperationCanceledException) when (!Token.IsCancellationRequested)
            {
            }
        }
        throw new TimeoutException($"after {after + 1} mutated datagrams the genuine echo no longer came back");
    }

    /// <summary>
    /// Sends every seed, then mutated inputs, eight connections at a time, while a well-behaved client keeps exchanging data
    /// through the same proxy. Most hostile connections half-close after their bytes; some send an unmutated request cut before
    /// <paramref name="requestEnd"/> and stay open, which only the handshake timeout ends.
    /// </summary>
    private async Task StormAsync(string name, LoopbackProxy proxy, byte[][] seeds, int seed, ErrorLog errors, Func<NetworkStream, CancellationToken, Task> handshake, Func<byte[], bool> replyShape, Func<byte[], int> requestEnd)
    {
        // Each input is a TCP connection and a flow: a hundredth of FERRY_FUZZ_ITERATIONS.
        var iterations = Fuzzer.Iterations(60_000) / 100;
        Fuzzer.Log($"{name}: seed {seed} (replay with FERRY_FUZZ_SEED={seed}), {iterations} connections, {seeds.Length} seed inputs");
        var random = new Random(seed);
        var inputs = new List<(byte[] Bytes, bool KeepOpen)>();
        inputs.AddRange(seeds.Select(s => (s, false)));
        for (var i = 0; i < iterations; i++)
        {
            if (random.Next(50) == 0)
            {
                var source = seeds[random.Next(seeds.Length)];
                inputs.Add((source[..random.Next(requestEnd(source))], true));
            }
            else
            {
                inputs.Add((Fuzzer.Next(random, seeds), false));
            }
        }

        // A slowloris crowd: connections that never send a byte, held open through the storm. Each must be closed by the
        // handshake timeout, and none may keep the well-behaved client from being served.
        var idle = new List<Socket>();
        for (var i = 0; i < IdleConnections; i++)
        {
            idle.Add(await FlowTestSupport.ConnectAsync(proxy.LocalEndPoint, Token));
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Token);
        var served = 0;
        var slowest = TimeSpan.Zero;
        var wellBehaved = Task.Run(async () =>
        {
            var payload = new byte[1024];
            while (!stop.IsCancellationRequested)
            {
                var watch = Stopwatch.StartNew();
                using var bound = CancellationTokenSource.CreateLinkedTokenSource(Token);
                bound.CancelAfter(ServedBound);
                using var socket = await FlowTestSupport.ConnectAsync(proxy.LocalEndPoint, bound.Token);
                await using var stream = new NetworkStream(socket);
                await handshake(stream, bound.Token);
                Random.Shared.NextBytes(payload);
                var echoed = await FlowTestSupport.ExchangeAsync(stream, FlowCopier.ShutdownSocketSend, payload, bound.Token);
                Assert.Equal(payload, echoed);
                served++;
                slowest = watch.Elapsed > slowest ? watch.Elapsed : slowest;
            }
        }, Token);

        var outcomes = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var failures = new ConcurrentQueue<string>();
        var stormWatch = Stopwatch.StartNew();
        await Parallel.ForEachAsync(inputs.Select((input, index) => (input, index)), new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = Token }, async (item, ct) =>
        {
            var ((bytes, keepOpen), index) = item;
            try
            {
                var (outcome, reply) = await HostileAsync(proxy.LocalEndPoint, bytes, keepOpen, ct);
                outcomes.AddOrUpdate(outcome, 1, (_, n) => n + 1);
                if (!replyShape(reply))
                {
                    failures.Enqueue($"input {index}: unexpected reply {Convert.ToHexString(reply.AsSpan(0, Math.Min(reply.Length, 64)))}; input: {Convert.ToHexString(bytes)}");
                }
            }
            catch (Exception e) when (e is TimeoutException or IOException or SocketException)
            {
                failures.Enqueue($"input {index}: {e.GetType().Name}: {e.Message}; input: {Convert.ToHexString(bytes)}");
            }
        });
        var stormTime = stormWatch.Elapsed;
        await stop.CancelAsync();
        await wellBehaved.WaitAsync(FlowTestSupport.Bound, Token);

        Fuzzer.Log($"{name}: {inputs.Count} connections in {stormTime.TotalMilliseconds:0} ms ({string.Join(", ", outcomes.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Value} {o.Key}"))}); " +
            $"the well-behaved client was served {served} times meanwhile, slowest {slowest.TotalMilliseconds:0} ms");
        Assert.True(failures.IsEmpty, $"{name} (seed {seed}): {failures.Count} connections went wrong:\n{string.Join('\n', failures.Take(10))}");
        foreach (var socket in idle)
        {
            using (socket)
            {
                using var bound = CancellationTokenSource.CreateLinkedTokenSource(Token);
                bound.CancelAfter(EndBound);
                // SOCKS5 closes silently; HTTP answers 408 first. Either way the connection must end within the bound.
                var buffer = new byte[1024];
                while (await socket.ReceiveAsync(buffer, SocketFlags.None, bound.Token) > 0)
                {
                }
            }
        }
        Assert.True(served > 0, "the well-behaved client was never served during the storm");
        errors.AssertNone();
        // Nothing is left behind: every connection the storm opened is gone.
        var deadline = Stopwatch.StartNew();
        while (proxy.ActiveConnections > 1 && deadline.Elapsed < EndBound)
        {
            await Task.Delay(20, Token);
        }
        Assert.InRange(proxy.ActiveConnections, 0, 1);
    }

    /// <summary>One hostile connection: sends its bytes (in up to three writes), then reads to the end; the proxy must end it within the bound.</summary>
    private static async Task<(string Outcome, byte[] Reply)> HostileAsync(IPEndPoint proxy, byte[] bytes, bool keepOpen, CancellationToken cancellationToken)
    {
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bound.CancelAfter(EndBound);
        using var socket = await FlowTestSupport.ConnectAsync(proxy, bound.Token);
        var received = new MemoryStream();
        try
        {
            var at = 0;
            var pieces = 1 + (bytes.Length % 3);
            for (var piece = 0; piece < pieces; piece++)
            {
                var length = piece == pieces - 1 ? bytes.Length - at : (bytes.Length - at) / 2;
                await socket.SendAsync(bytes.AsMemory(at, length), SocketFlags.None, bound.Token);
                at += length;
            }
            if (!keepOpen)
            {
                socket.Shutdown(SocketShutdown.Send);
            }
        }
        catch (SocketException)
        {
            // The proxy may refuse and close before the whole input is written: that is an answer too.
        }
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var read = await socket.ReceiveAsync(buffer, SocketFlags.None, bound.Token);
                if (read == 0)
                {
                    return (received.Length == 0 ? "closed silently" : "answered and closed", received.ToArray());
                }
                if (received.Length < 64 * 1024)
                {
                    received.Write(buffer, 0, read);
                }
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return ("reset", received.ToArray());
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"the proxy did not end the connection within {EndBound.TotalSeconds} s (keep-open {keepOpen}, {received.Length} bytes received)");
        }
    }

    /// <summary>Collects what the proxies log as errors: a handler that threw something unexpected.</summary>
    private sealed class ErrorLog : ILogger
    {
        private readonly ConcurrentQueue<string> _errors = new();

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Error)
            {
                _errors.Enqueue($"{formatter(state, exception)}: {exception}");
            }
        }

        public void AssertNone() => Assert.True(_errors.IsEmpty, $"the proxy logged errors:\n{string.Join('\n', _errors.Take(5))}");
    }
}
