using static Ferry.Benchmarks.BenchSupport;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Ferry.Benchmarks;

/// <summary>
/// Ferry end to end (real controller, relay, connector and client processes on loopback) against what people would use
/// instead, in the same run: raw loopback TCP (the limit) and OpenSSH port forwarding (<c>ssh -L</c>). One TCP flow each:
/// bulk throughput, request/response latency, and time from a new connection to its first byte back.
/// </summary>
internal static class EndToEnd
{
    public const string Command = "e2e";

    private sealed record Target(string Name, IPEndPoint EndPoint);

    public static async Task<int> RunAsync(string[] args)
    {
        if (args is [_, "--serve", var listen, "--parent", var parent])
        {
            return await ServeAsync(IPAddress.Parse(listen), int.Parse(parent, CultureInfo.InvariantCulture));
        }
        int runs = 3, sizeMiB = 128, requests = 2000, connections = 200;
        for (int i = 1; i < args.Length; i++)
        {
            if (i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var v) && v > 0)
            {
                switch (args[i])
                {
                    case "--runs": runs = v; i++; continue;
                    case "--size-mib": sizeMiB = v; i++; continue;
                    case "--requests": requests = v; i++; continue;
                    case "--connections": connections = v; i++; continue;
                }
            }
            Console.Error.WriteLine("usage: Ferry.Benchmarks e2e [--runs N] [--size-mib N] [--requests N] [--connections N]");
            return 2;
        }
        var root = BenchSupport.FindRoot() ?? throw new InvalidOperationException("run from inside the Ferry repository");
        using var overall = new CancellationTokenSource(TimeSpan.FromMinutes(40));
        var ct = overall.Token;

        if (await BenchSupport.BuildFerryAsync(root, ct) is not { } ferry)
        {
            return 1;
        }
        var work = Directory.CreateTempSubdirectory("ferry-bench-e2e-").FullName;
        await using var server = new BenchServer();
        var processes = new List<ChildProcess>();
        try
        {
            var targets = new List<Target> { new("raw loopback TCP", server.EndPoint) };
            Console.Error.WriteLine("starting controller, relay, connector and two clients");
            var lab = await FerryLab.StartAsync(ferry, work, server.EndPoint.Port, processes, ct);
            targets.Add(new("Ferry, direct path", lab.Direct));
            targets.Add(new("Ferry, relayed path", lab.Relayed));
            if (await SshForward.TryStartAsync(work, server.EndPoint.Port, processes, ct) is { } ssh)
            {
                targets.Add(new("ssh -L (OpenSSH)", ssh));
            }
            else
            {
                Console.Error.WriteLine("ssh -L left out: needs root and Debian's openssh-server and openssh-client");
            }
            await using var wireGuard = await WireGuardTunnel.TryStartAsync(processes, ct);
            if (wireGuard is not null)
            {
                targets.Add(new("wireguard-go + kernel TCP", wireGuard.Server));
            }
            Console.WriteLine($"Ferry.Benchmarks e2e: {Environment.ProcessorCount} CPUs, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}; "
                + $"{sizeMiB} MiB bulk, {requests} requests, {connections} new connections, x {runs} runs, cases interleaved; direct path: {lab.DirectKind}");

            // Warm-up: JIT in every process, connections established, windows grown.
            foreach (var t in targets)
            {
                await BulkAsync(t.EndPoint, 16, ct);
                await PingPongAsync(t.EndPoint, 100, ct);
                await NewConnectionsAsync(t.EndPoint, 10, ct);
            }
            var bulk = targets.Select(_ => new List<double>()).ToArray();
            var p50 = targets.Select(_ => new List<double>()).ToArray();
            var p99 = targets.Select(_ => new List<double>()).ToArray();
            var setup = targets.Select(_ => new List<double>()).ToArray();
            for (var run = 0; run < runs; run++)
            {
                for (var i = 0; i < targets.Count; i++)
                {
                    bulk[i].Add(sizeMiB / (await BulkAsync(targets[i].EndPoint, sizeMiB, ct)).TotalSeconds);
                    var latencies = await PingPongAsync(targets[i].EndPoint, requests, ct);
                    p50[i].Add(Percentile(latencies, 0.50));
                    p99[i].Add(Percentile(latencies, 0.99));
                    var setups = await NewConnectionsAsync(targets[i].EndPoint, connections, ct);
                    setup[i].Add(Percentile(setups, 0.50));
                }
                Console.Error.WriteLine($"run {run + 1}/{runs} done");
            }

            Console.WriteLine();
            Console.WriteLine($"One TCP flow, {sizeMiB} MiB one way (MiB/s, higher is better)");
            Console.WriteLine();
            Console.WriteLine("| case | median MiB/s | min – max | vs raw TCP | vs ssh -L |");
            Console.WriteLine("|---|---:|---:|---:|---:|");
            var sshIndex = targets.FindIndex(t => t.Name.StartsWith("ssh", StringComparison.Ordinal));
            for (var i = 0; i < targets.Count; i++)
            {
                var m = Stats.Median(bulk[i]);
                Console.WriteLine(Inv($"| {targets[i].Name} | {m:F0} | {bulk[i].Min():F0} – {bulk[i].Max():F0} | {m / Stats.Median(bulk[0]):F2}× | {(sshIndex < 0 ? "–" : Inv($"{m / Stats.Median(bulk[sshIndex]):F2}×"))} |"));
            }
            Console.WriteLine();
            Console.WriteLine($"Request/response, 64 bytes each way on one connection, {requests} in a row (µs, lower is better)");
            Console.WriteLine();
            Console.WriteLine("| case | p50 µs | p99 µs | p50 added over raw TCP |");
            Console.WriteLine("|---|---:|---:|---:|");
            for (var i = 0; i < targets.Count; i++)
            {
                Console.WriteLine(Inv($"| {targets[i].Name} | {Stats.Median(p50[i]):F0} | {Stats.Median(p99[i]):F0} | {Stats.Median(p50[i]) - Stats.Median(p50[0]):F0} |"));
            }
            Console.WriteLine();
            Console.WriteLine("New flow: TCP connect to the forward, 1 byte out, 1 byte back (median µs; Ferry: a new stream on the open QUIC connection)");
            Console.WriteLine();
            Console.WriteLine("| case | median µs | min – max of run medians | vs raw TCP |");
            Console.WriteLine("|---|---:|---:|---:|");
            for (var i = 0; i < targets.Count; i++)
            {
                var m = Stats.Median(setup[i]);
                Console.WriteLine(Inv($"| {targets[i].Name} | {m:F0} | {setup[i].Min():F0} – {setup[i].Max():F0} | {m / Stats.Median(setup[0]):F1}× |"));
            }
            var chart = Path.Combine(root, "artifacts", "bench", "e2e-throughput.svg");
            Directory.CreateDirectory(Path.GetDirectoryName(chart)!);
            await File.WriteAllTextAsync(chart, BarChart($"One TCP flow, {sizeMiB} MiB (MiB/s, median of {runs})", [.. targets.Select((t, i) => (t.Name, Stats.Median(bulk[i])))]), ct);
            Console.WriteLine();
            Console.WriteLine($"chart: {chart}");
            return 0;
        }
        finally
        {
            foreach (var p in processes)
            {
                p.Dispose();
            }
            Directory.Delete(work, recursive: true);
        }
    }

    private static async Task<TimeSpan> BulkAsync(IPEndPoint target, int mib, CancellationToken ct)
    {
        using var tcp = new TcpClient { NoDelay = true };
        await tcp.ConnectAsync(target, ct);
        var stream = tcp.GetStream();
        var chunk = new byte[256 * 1024];
        new Random(7).NextBytes(chunk);
        chunk[0] = (byte)'B';
        var clock = Stopwatch.StartNew();
        var left = (long)mib << 20;
        while (left > 0)
        {
            var n = (int)Math.Min(left, chunk.Length);
            await stream.WriteAsync(chunk.AsMemory(0, n), ct);
            left -= n;
            chunk[0] = 0;
        }
        tcp.Client.Shutdown(SocketShutdown.Send);
        var done = new byte[1];
        await stream.ReadExactlyAsync(done, ct).AsTask().WaitAsync(TimeSpan.FromMinutes(5), ct);
        return clock.Elapsed;
    }

    private static async Task<List<double>> PingPongAsync(IPEndPoint target, int count, CancellationToken ct)
    {
        using var tcp = new TcpClient { NoDelay = true };
        await tcp.ConnectAsync(target, ct);
        var stream = tcp.GetStream();
        var message = new byte[64];
        message[0] = (byte)'E';
        var back = new byte[64];
        var result = new List<double>(count);
        for (var i = 0; i < count; i++)
        {
            var start = Stopwatch.GetTimestamp();
            await stream.WriteAsync(message, ct);
            await stream.ReadExactlyAsync(back, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(30), ct);
            result.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
            message[0] = 1;
        }
        return result;
    }

    private static async Task<List<double>> NewConnectionsAsync(IPEndPoint target, int count, CancellationToken ct)
    {
        var result = new List<double>(count);
        var one = new byte[] { (byte)'E' };
        var back = new byte[1];
        for (var i = 0; i < count; i++)
        {
            var start = Stopwatch.GetTimestamp();
            using var tcp = new TcpClient { NoDelay = true };
            await tcp.ConnectAsync(target, ct);
            var stream = tcp.GetStream();
            await stream.WriteAsync(one, ct);
            await stream.ReadExactlyAsync(back, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(30), ct);
            result.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        }
        return result;
    }

    private static double Percentile(List<double> values, double q)
    {
        var sorted = values.Order().ToArray();
        return sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
    }

    private static string BarChart(string title, (string Name, double Value)[] bars)
    {
        const int width = 760, barHeight = 34, left = 190, top = 48;
        var max = bars.Max(b => b.Value);
        var svg = new StringBuilder();
        svg.Append(Inv($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{top + (bars.Length * (barHeight + 12)) + 20}\" font-family=\"sans-serif\" font-size=\"13\">"));
        svg.Append(Inv($"<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{Escape(title)}</text>"));
        for (var i = 0; i < bars.Length; i++)
        {
            var y = top + (i * (barHeight + 12));
            var w = Math.Max(1, (width - left - 90) * bars[i].Value / max);
            svg.Append(Inv($"<text x=\"{left - 8}\" y=\"{y + 22}\" text-anchor=\"end\">{Escape(bars[i].Name)}</text>"));
            svg.Append(Inv($"<rect x=\"{left}\" y=\"{y}\" width=\"{w:F0}\" height=\"{barHeight}\" fill=\"{(bars[i].Name.StartsWith("Ferry", StringComparison.Ordinal) ? "#2b6cb0" : "#a0aec0")}\"/>"));
            svg.Append(Inv($"<text x=\"{left + w + 6:F0}\" y=\"{y + 22}\">{bars[i].Value:F0}</text>"));
        }
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    private static string Escape(string s) => s.Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal);



    /// <summary>The bench server alone, for the far side of a tunnel in another network namespace; runs until the benchmark is gone.</summary>
    private static async Task<int> ServeAsync(IPAddress address, int parent)
    {
        await using var server = new BenchServer(address);
        Console.WriteLine(Inv($"listening {server.EndPoint}"));
        // A benchmark killed without its clean-up must not leave this behind.
        while (Directory.Exists($"/proc/{parent}"))
        {
            await Task.Delay(1000);
        }
        return 0;
    }

    /// <summary>The far end of every case: 'B' then bytes until EOF, answered with one byte; 'E' then an echo of everything.</summary>
    private sealed class BenchServer : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accept;

        public BenchServer(IPAddress? address = null)
        {
            _listener = new(address ?? IPAddress.Loopback, 0);
            _listener.Start(512);
            _accept = Task.Run(AcceptAsync);
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

        private async Task AcceptAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync(_stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
                {
                    return;
                }
                _ = Task.Run(() => ServeAsync(client));
            }
        }

        private static async Task ServeAsync(TcpClient client)
        {
            using (client)
            {
                client.NoDelay = true;
                var stream = client.GetStream();
                var buffer = new byte[256 * 1024];
                try
                {
                    var n = await stream.ReadAsync(buffer);
                    if (n == 0)
                    {
                        return;
                    }
                    var echo = buffer[0] == (byte)'E';
                    while (n > 0)
                    {
                        if (echo)
                        {
                            await stream.WriteAsync(buffer.AsMemory(0, n));
                        }
                        n = await stream.ReadAsync(buffer);
                    }
                    if (!echo)
                    {
                        await stream.WriteAsync(new byte[] { 1 });
                    }
                }
                catch (IOException)
                {
                    // The benchmark side went away.
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _accept;
        }
    }

    /// <summary>A controller, relay, connector and two clients (one allowed a direct path, one kept on the relay), each forwarding to the server.</summary>
    private sealed record FerryLab(IPEndPoint Direct, IPEndPoint Relayed, string DirectKind)
    {
        public static async Task<FerryLab> StartAsync(string ferry, string work, int serverPort, List<ChildProcess> processes, CancellationToken ct)
        {
            var data = Path.Combine(work, "controller");
            var controller = ChildProcess.Start(ferry, ["controller", "--data", data, "--listen", "127.0.0.1:0"]);
            processes.Add(controller);
            var url = (await controller.WaitForLineAsync("admin URL:", ct)).Split("admin URL:")[1].Trim().TrimEnd('/');
            var fingerprint = (await controller.WaitForLineAsync("TLS fingerprint:", ct)).Split("TLS fingerprint:")[1].Trim();
            var env = new Dictionary<string, string>
            {
                ["FERRY_CONTROLLER"] = url,
                ["FERRY_CONTROLLER_FINGERPRINT"] = fingerprint,
                ["FERRY_API_KEY"] = (await File.ReadAllTextAsync(Path.Combine(data, "admin.key"), ct)).Trim(),
            };
            async Task<string> Admin(params string[] args)
            {
                var r = await ChildProcess.RunAsync(ferry, ["admin", .. args], ct, env);
                return r.Code == 0 ? r.Output : throw new InvalidOperationException($"ferry admin {string.Join(' ', args)}: {r.Output}");
            }
            var relayTokens = Path.Combine(work, "relay.json");
            await File.WriteAllTextAsync(relayTokens, await Admin("relay", "provision", "--name", "r1", "--json"), ct);
            var relay = ChildProcess.Start(ferry, ["relay", "--tokens", relayTokens, "--state", Path.Combine(work, "relay-state"), "--listen", "127.0.0.1:0", "--stun", "127.0.0.1:0"]);
            processes.Add(relay);
            await relay.WaitForLineAsync("Relay links accepted", ct);
            await Admin("network", "create", "bench");
            await Admin("resource", "add", "127.0.0.1", "--network", "bench", "--name", "server", "--tcp", serverPort.ToString(CultureInfo.InvariantCulture));
            var key = JsonDocument.Parse(await Admin("service-account", "create", "bench", "--json")).RootElement.GetProperty("key").GetString()!;
            await Admin("policy", "grant", "server", "--service-account", "bench");
            var connectorTokens = Path.Combine(work, "connector.json");
            await File.WriteAllTextAsync(connectorTokens, await Admin("connector", "provision", "--network", "bench", "--name", "c1", "--json"), ct);
            var connector = ChildProcess.Start(ferry, ["connector", "--tokens", connectorTokens, "--state", Path.Combine(work, "connector-state")]);
            processes.Add(connector);
            await connector.WaitForLineAsync("STUN discovery", ct);

            async Task<(IPEndPoint Forward, string State)> Client(string name, params string[] extra)
            {
                var state = Path.Combine(work, name);
                var client = ChildProcess.Start(ferry, ["client", "--state", state, "up", "--socks", "off", "--device-name", name,
                    "--forward", $"0=127.0.0.1:{serverPort}", .. extra], new Dictionary<string, string>(env) { ["FERRY_SERVICE_ACCOUNT_KEY"] = key });
                processes.Add(client);
                var line = await client.WaitForLineAsync(" listening on ", ct);
                return (IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]), state);
            }
            var direct = await Client("direct");
            var relayed = await Client("relayed", "--direct", "off");
            // A first flow on each opens its connection; the direct one then gets up to 20 s to find its path.
            await PingPongAsync(direct.Forward, 1, ct);
            await PingPongAsync(relayed.Forward, 1, ct);
            var kind = "relayed";
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (DateTime.UtcNow < deadline)
            {
                await PingPongAsync(direct.Forward, 10, ct);
                var status = await ChildProcess.RunAsync(ferry, ["client", "--state", direct.State, "status"], ct);
                var paths = JsonDocument.Parse(status.Output).RootElement.GetProperty("paths");
                if (paths.GetArrayLength() > 0 && paths[0].GetProperty("kind").GetString() == "direct")
                {
                    kind = $"direct ({paths[0].GetProperty("local").GetString()} -> {paths[0].GetProperty("remote").GetString()})";
                    break;
                }
                await Task.Delay(250, ct);
            }
            if (kind == "relayed")
            {
                Console.Error.WriteLine("the 'direct' client found no direct path within 20 s (no non-loopback address on this host?): its figures are relayed");
            }
            return new FerryLab(direct.Forward, relayed.Forward, kind);
        }
    }

    /// <summary>An sshd on a free loopback port with throw-away keys, and an <c>ssh -N -L</c> to the server through it.</summary>
    private static class SshForward
    {
        public static async Task<IPEndPoint?> TryStartAsync(string work, int serverPort, List<ChildProcess> processes, CancellationToken ct)
        {
            if (!File.Exists("/usr/sbin/sshd") || !File.Exists("/usr/bin/ssh") || Environment.UserName != "root")
            {
                return null;
            }
            var dir = Path.Combine(work, "ssh");
            Directory.CreateDirectory(dir);
            foreach (var name in new[] { "host", "user" })
            {
                var keygen = await ChildProcess.RunAsync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", Path.Combine(dir, name)], ct);
                if (keygen.Code != 0)
                {
                    return null;
                }
            }
            File.Copy(Path.Combine(dir, "user.pub"), Path.Combine(dir, "authorized_keys"));
            var sshdPort = FreePort();
            Directory.CreateDirectory("/run/sshd");
            var sshd = ChildProcess.Start("/usr/sbin/sshd", ["-D", "-e", "-p", sshdPort.ToString(CultureInfo.InvariantCulture), "-h", Path.Combine(dir, "host"),
                "-o", "ListenAddress=127.0.0.1", "-o", $"AuthorizedKeysFile={Path.Combine(dir, "authorized_keys")}", "-o", "StrictModes=no",
                "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no", "-o", $"PidFile={Path.Combine(dir, "sshd.pid")}", "-o", "UsePAM=no"]);
            processes.Add(sshd);
            await sshd.WaitForLineAsync("Server listening", ct);
            var local = FreePort();
            var ssh = ChildProcess.Start("/usr/bin/ssh", ["-N", "-i", Path.Combine(dir, "user"), "-p", sshdPort.ToString(CultureInfo.InvariantCulture),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-L", $"127.0.0.1:{local}:127.0.0.1:{serverPort}", "root@127.0.0.1"]);
            processes.Add(ssh);
            var endpoint = new IPEndPoint(IPAddress.Loopback, local);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
            while (DateTime.UtcNow < deadline)
            {
                try
                {
                    await PingPongAsync(endpoint, 1, ct);
                    return endpoint;
                }
                catch (Exception e) when (e is SocketException or IOException)
                {
                    await Task.Delay(100, ct);
                }
            }
            Console.Error.WriteLine($"ssh -L never forwarded:\n{ssh.Output}\n{sshd.Output}");
            return null;
        }

        private static int FreePort()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            return port;
        }
    }

    /// <summary>
    /// The reference the issue names for a VPN: wireguard-go (Debian's package, userspace like Ferry) between this namespace and a
    /// throw-away one over a veth, with kernel TCP inside the tunnel to a bench server in the other namespace.
    /// </summary>
    private sealed class WireGuardTunnel : IAsyncDisposable
    {
        private readonly string _namespace;

        private WireGuardTunnel(string ns, IPEndPoint server)
        {
            _namespace = ns;
            Server = server;
        }

        public IPEndPoint Server { get; }

        public static async Task<WireGuardTunnel?> TryStartAsync(List<ChildProcess> processes, CancellationToken ct)
        {
            string[] tools = ["/usr/bin/wireguard-go", "/usr/bin/wg", "/usr/bin/ip", "/dev/net/tun"];
            if (Environment.UserName != "root" || tools.FirstOrDefault(t => !File.Exists(t)) is { } missing)
            {
                Console.Error.WriteLine("wireguard-go left out: needs root, Debian's wireguard-go, wireguard-tools and iproute2, and /dev/net/tun");
                return null;
            }
            // Names carry the process id so two runs, or a leftover of a killed one, never collide.
            var id = (Environment.ProcessId % 100000).ToString(CultureInfo.InvariantCulture);
            var ns = $"fbwg{id}";
            var tunnel = new WireGuardTunnel(ns, new IPEndPoint(IPAddress.Parse("10.202.0.2"), 0));
            try
            {
                var (hostVeth, nsVeth, hostWg, nsWg) = ($"fbv{id}h", $"fbv{id}n", $"fbw{id}h", $"fbw{id}n");
                async Task Run(params string[] args)
                {
                    var r = await ChildProcess.RunAsync(args[0], args[1..], ct);
                    if (r.Code != 0)
                    {
                        throw new InvalidOperationException($"{string.Join(' ', args)}: {r.Output}");
                    }
                }
                async Task<string> Key(string file, string? privateKey = null)
                {
                    var r = privateKey is null ? await ChildProcess.RunAsync("wg", ["genkey"], ct) : await ChildProcess.RunAsync("sh", ["-c", $"wg pubkey < {privateKey}"], ct);
                    await File.WriteAllTextAsync(file, r.Output.Trim() + "\n", ct);
                    return r.Output.Trim();
                }
                await Run("ip", "netns", "add", ns);
                await Run("ip", "link", "add", hostVeth, "type", "veth", "peer", "name", nsVeth);
                await Run("ip", "link", "set", nsVeth, "netns", ns);
                await Run("ip", "addr", "add", "10.201.0.1/30", "dev", hostVeth);
                await Run("ip", "link", "set", hostVeth, "up");
                await Run("ip", "-n", ns, "addr", "add", "10.201.0.2/30", "dev", nsVeth);
                await Run("ip", "-n", ns, "link", "set", nsVeth, "up");
                await Run("ip", "-n", ns, "link", "set", "lo", "up");
                var keys = Directory.CreateTempSubdirectory("ferry-bench-wg-").FullName;
                try
                {
                    var hostPrivate = Path.Combine(keys, "host");
                    var nsPrivate = Path.Combine(keys, "ns");
                    await Key(hostPrivate);
                    await Key(nsPrivate);
                    var hostPublic = await Key(Path.Combine(keys, "host.pub"), hostPrivate);
                    var nsPublic = await Key(Path.Combine(keys, "ns.pub"), nsPrivate);
                    var foreground = new Dictionary<string, string> { ["WG_PROCESS_FOREGROUND"] = "1" };
                    var hostDaemon = ChildProcess.Start("wireguard-go", [hostWg], foreground);
                    processes.Add(hostDaemon);
                    var nsDaemon = ChildProcess.Start("ip", ["netns", "exec", ns, "wireguard-go", nsWg], foreground);
                    processes.Add(nsDaemon);
                    // The daemons print nothing when ready; their control sockets appearing is the sign.
                    var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
                    while (!(File.Exists($"/var/run/wireguard/{hostWg}.sock") && File.Exists($"/var/run/wireguard/{nsWg}.sock")))
                    {
                        if (DateTime.UtcNow > deadline)
                        {
                            throw new TimeoutException($"wireguard-go did not come up within 15 s:\n{hostDaemon.Output}\n{nsDaemon.Output}");
                        }
                        await Task.Delay(50, ct);
                    }
                    await Run("wg", "set", hostWg, "private-key", hostPrivate, "listen-port", "51901", "peer", nsPublic, "allowed-ips", "10.202.0.2/32", "endpoint", "10.201.0.2:51902");
                    await Run("ip", "netns", "exec", ns, "wg", "set", nsWg, "private-key", nsPrivate, "listen-port", "51902", "peer", hostPublic, "allowed-ips", "10.202.0.1/32", "endpoint", "10.201.0.1:51901");
                }
                finally
                {
                    Directory.Delete(keys, recursive: true);
                }
                await Run("ip", "addr", "add", "10.202.0.1/24", "dev", hostWg);
                await Run("ip", "link", "set", hostWg, "up");
                await Run("ip", "-n", ns, "addr", "add", "10.202.0.2/24", "dev", nsWg);
                await Run("ip", "-n", ns, "link", "set", nsWg, "up");
                var server = ChildProcess.Start("ip", ["netns", "exec", ns, Environment.ProcessPath!, Command, "--serve", "10.202.0.2", "--parent", Environment.ProcessId.ToString(CultureInfo.InvariantCulture)]);
                processes.Add(server);
                var line = await server.WaitForLineAsync("listening ", ct);
                var endpoint = IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..]);
                await PingPongAsync(endpoint, 1, ct).WaitAsync(TimeSpan.FromSeconds(15), ct);
                return new WireGuardTunnel(ns, endpoint);
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or SocketException or IOException)
            {
                Console.Error.WriteLine($"wireguard-go left out: {e.Message}");
                await tunnel.DisposeAsync();
                return null;
            }
        }

        /// <summary>Deleting the namespace takes its veth end (and so the pair) and its tunnel; the host's tunnel goes with its daemon.</summary>
        public async ValueTask DisposeAsync()
        {
            await ChildProcess.RunAsync("ip", ["netns", "del", _namespace], CancellationToken.None);
        }
    }
}
