using static Ferry.Benchmarks.BenchSupport;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;

namespace Ferry.Benchmarks;

/// <summary>
/// Ferry at scale on loopback (issues 10 and 11): thousands of concurrent TCP flows through one connector, and many client
/// sessions against one controller, then a bounded soak with flows cycling. Every byte is checked, and the connector's,
/// relay's, controller's and clients' memory, descriptors and CPU are sampled from /proc.
/// </summary>
internal static class Scale
{
    public const string Command = "scale";

    private const string Usage = "usage: Ferry.Benchmarks scale [--flows N] [--clients N] [--minutes N] [--flows-per-process N] [--pause-max-seconds N]";

    // Bytes each way per exchange; small, so memory measures what a flow costs, not what its data costs.
    private const int ExchangeBytes = 4096;

    public static async Task<int> RunAsync(string[] args)
    {
        if (args is [_, "--echo-server"])
        {
            return await RunEchoServerAsync();
        }
        int flows = 10_000, sessions = 1_000, minutes = 1, perProcess = 2_500, pauseMax = 5;
        for (var i = 1; i < args.Length; i++)
        {
            if (i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var v) && v >= 0)
            {
                switch (args[i])
                {
                    case "--flows" when v > 0: flows = v; i++; continue;
                    case "--clients": sessions = v; i++; continue;
                    case "--minutes": minutes = v; i++; continue;
                    case "--flows-per-process" when v > 0: perProcess = v; i++; continue;
                    case "--pause-max-seconds" when v > 1: pauseMax = v; i++; continue;
                }
            }
            Console.Error.WriteLine($"scale: '{args[i]}' needs a whole number (at least 1; --clients and --minutes may be 0, --pause-max-seconds at least 2), or is not an option of scale");
            Console.Error.WriteLine(Usage);
            return 2;
        }
        var root = BenchSupport.FindRoot() ?? throw new InvalidOperationException("run from inside the Ferry repository");
        // Everything is bounded: setup, the two scale phases, and the soak.
        using var overall = new CancellationTokenSource(TimeSpan.FromMinutes(20 + minutes));
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            overall.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        var ct = overall.Token;
        var processes = new ConcurrentBag<ChildProcess>();
        void KillAll()
        {
            foreach (var p in processes)
            {
                p.Dispose();
            }
        }
        EventHandler onExit = (_, _) => KillAll();
        AppDomain.CurrentDomain.ProcessExit += onExit;

        // Each flow costs the bench two descriptors and a client one; the children inherit the raised limit.
        var limit = await RaiseDescriptorLimitAsync(ct);
        if (await BenchSupport.BuildFerryAsync(root, ct) is not { } ferry)
        {
            return 1;
        }
        var work = Directory.CreateTempSubdirectory("ferry-bench-scale-").FullName;
        var csvPath = Path.Combine(root, "artifacts", "bench", $"scale-{DateTime.UtcNow:yyyyMMdd-HHmmss}.csv");
        Directory.CreateDirectory(Path.GetDirectoryName(csvPath)!);
        var csv = new StringBuilder("utc,phase,process,rss_kib,fds,cpu_s\n");
        var errors = new ErrorTally();
        try
        {
            // The echo server is a process of its own: this one already holds a descriptor per flow, and the hard limit may be low.
            var echo = StartEchoServer();
            processes.Add(echo);
            var echoPort = int.Parse((await echo.WaitForLineAsync("echo listening on ", ct)).Split(':')[^1], CultureInfo.InvariantCulture);
            var clientProcesses = Math.Max(1, (flows + perProcess - 1) / perProcess);
            Console.Error.WriteLine($"descriptor limit {limit}; starting controller, relay, connector and {clientProcesses} client processes");
            var lab = await Lab.StartAsync(ferry, work, echoPort, clientProcesses, processes, ct);
            Console.WriteLine($"Ferry.Benchmarks scale: {Environment.ProcessorCount} CPUs, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}; "
                + $"{flows} flows over {clientProcesses} client processes (half of them kept on the relay), {sessions} client sessions, soak {minutes} min; "
                + $"{ExchangeBytes} B each way per exchange, one every 1–{pauseMax} s per flow in the soak, every byte compared");

            Sample Take(string phase, string name, int pid)
            {
                var s = Sample.Read(pid);
                csv.Append(Inv($"{DateTime.UtcNow:O},{phase},{name},{s.RssKiB},{s.Fds},{s.CpuSeconds:F2}\n"));
                return s;
            }
            Dictionary<string, Sample> TakeAll(string phase)
            {
                var all = new Dictionary<string, Sample>
                {
                    ["connector"] = Take(phase, "connector", lab.Connector.Pid),
                    ["relay"] = Take(phase, "relay", lab.Relay.Pid),
                    ["controller"] = Take(phase, "controller", lab.Controller.Pid),
                };
                var clients = lab.Clients.Select((c, i) => Take(phase, $"client{i}", c.Process.Pid)).ToArray();
                all["clients"] = new Sample(clients.Sum(c => c.RssKiB), clients.Sum(c => c.Fds), clients.Sum(c => c.CpuSeconds));
                return all;
            }

            // Warm-up: JIT in every process, each client's QUIC connection open and its path settled.
            foreach (var c in lab.Clients)
            {
                await RunFlowsAsync(Enumerable.Range(0, 50).Select(i => (c.Forward, (long)(-1 - i))).ToArray(), 32, _ => Task.CompletedTask, new ErrorTally(), ct);
            }
            await Task.Delay(TimeSpan.FromSeconds(3), ct);

            // Phase 1: every flow open at once.
            var udpDropsAtStart = UdpReceiveBufferDrops();
            var before = TakeAll("flows-baseline");
            var targets = Enumerable.Range(0, flows).Select(i => (lab.Clients[i % lab.Clients.Count].Forward, (long)i)).ToArray();
            var allOpen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var opened = 0;
            var clock = Stopwatch.StartNew();
            var flowRun = RunFlowsAsync(targets, 256, async _ =>
            {
                Interlocked.Increment(ref opened);
                await allOpen.Task.WaitAsync(ct);
            }, errors, ct);
            // Wait until every flow has opened or failed (bounded), then let the processes settle before sampling.
            var openDeadline = DateTime.UtcNow + TimeSpan.FromMinutes(5);
            while (Volatile.Read(ref opened) + errors.FlowsFailed < flows && DateTime.UtcNow < openDeadline && !flowRun.IsCompleted)
            {
                await Task.Delay(200, ct);
            }
            var openSeconds = clock.Elapsed.TotalSeconds;
            await Task.Delay(TimeSpan.FromSeconds(3), ct);
            var during = TakeAll("flows-open");
            var openCount = Volatile.Read(ref opened);
            allOpen.SetResult();
            await flowRun.WaitAsync(TimeSpan.FromMinutes(5), ct);
            var closeSeconds = clock.Elapsed.TotalSeconds - openSeconds;
            // Closed flows leave the connector's descriptors; wait for that (bounded), then sample.
            var closeDeadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (Sample.Read(lab.Connector.Pid).Fds > before["connector"].Fds + 20 && DateTime.UtcNow < closeDeadline)
            {
                await Task.Delay(250, ct);
            }
            var after = TakeAll("flows-closed");
            var flowErrors = errors.Snapshot();

            // Phase 2: client sessions against the controller, held through the soak.
            var controllerBefore = Take("sessions-baseline", "controller", lab.Controller.Pid);
            await using var fleet = new SessionFleet(lab.ControllerUrl, lab.Trust, lab.ServiceAccountKey, errors);
            clock.Restart();
            var welcomed = await fleet.StartAsync(sessions, ct);
            var sessionSeconds = clock.Elapsed.TotalSeconds;
            var onlineReported = sessions == 0 ? 0 : await lab.CountOnlineAsync("scale-", sessions, ct);
            await Task.Delay(TimeSpan.FromSeconds(3), ct);
            var controllerDuring = Take("sessions-open", "controller", lab.Controller.Pid);

            // Phase 3: the soak. Every flow slot keeps opening, exchanging a few times and closing flows; all sessions stay up.
            var soak = new List<(double At, Dictionary<string, Sample> Samples)>();
            var soakStats = new SoakStats();
            var soakErrorsBefore = errors.Total;
            if (minutes > 0)
            {
                using var soakEnd = CancellationTokenSource.CreateLinkedTokenSource(ct);
                soakEnd.CancelAfter(TimeSpan.FromMinutes(minutes));
                clock.Restart();
                var slots = Enumerable.Range(0, flows).Select(i => CycleAsync(lab.Clients[i % lab.Clients.Count].Forward, i, pauseMax, soakStats, errors, soakEnd.Token)).ToArray();
                while (!soakEnd.IsCancellationRequested)
                {
                    if (new[] { lab.Controller, lab.Relay, lab.Connector }.Concat(lab.Clients.Select(c => c.Process)).FirstOrDefault(p => p.Exited is not null) is { } gone)
                    {
                        Console.Error.WriteLine($"soak stopped: {gone.Name} {gone.Exited}");
                        await soakEnd.CancelAsync();
                        break;
                    }
                    soak.Add((clock.Elapsed.TotalSeconds, TakeAll("soak")));
                    Console.Error.WriteLine(Inv($"soak {clock.Elapsed.TotalSeconds:F0} s: {soakStats.Flows} flows, {soakStats.Bytes / 1048576.0:F0} MiB checked, {errors.Total - soakErrorsBefore} errors, connector {soak[^1].Samples["connector"].RssKiB / 1024} MiB / {soak[^1].Samples["connector"].Fds} fds"));
                    try
                    {
                        await Task.Delay(TimeSpan.FromSeconds(10), soakEnd.Token);
                    }
                    catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                    {
                        // The soak's time is up.
                    }
                }
                await Task.WhenAll(slots).WaitAsync(TimeSpan.FromMinutes(2), ct);
                soak.Add((clock.Elapsed.TotalSeconds, TakeAll("soak-end")));
            }
            var sessionsAlive = fleet.Alive;
            Console.Error.WriteLine($"UDP datagrams dropped for a full receive buffer during the run (whole host, other load included): {UdpReceiveBufferDrops() - udpDropsAtStart}");
            await fleet.DisposeAsync();

            Report(flows, openCount, openSeconds, closeSeconds, before, during, after, flowErrors,
                sessions, welcomed, sessionSeconds, onlineReported, sessionsAlive, controllerBefore, controllerDuring,
                minutes, soak, soakStats, errors, csvPath);
            return errors.Total == 0 && openCount == flows && welcomed == sessions ? 0 : 1;
        }
        finally
        {
            await File.WriteAllTextAsync(csvPath, csv.ToString(), CancellationToken.None);
            foreach (var p in processes.Where(p => p.Exited is not null))
            {
                errors.Add($"{p.Name} {p.Exited}");
                Console.WriteLine($"{p.Name} {p.Exited}");
            }
            var problems = processes.SelectMany(p => p.Problems.Select(l => $"{p.Name}: {l}")).ToArray();
            var problemsPath = Path.ChangeExtension(csvPath, ".log");
            await File.WriteAllLinesAsync(problemsPath, problems, CancellationToken.None);
            Console.WriteLine($"warnings and errors the processes logged: {problems.Length} ({problemsPath})");
            foreach (var group in processes.Where(p => p.Problems.Count > 0))
            {
                Console.WriteLine($"  {group.Name}: {group.Problems.Count}, first: {group.Problems[0]}");
            }
            KillAll();
            AppDomain.CurrentDomain.ProcessExit -= onExit;
            Console.CancelKeyPress -= onCancel;
            Directory.Delete(work, recursive: true);
        }
    }

    private static void Report(
        int flows, int openCount, double openSeconds, double closeSeconds,
        Dictionary<string, Sample> before, Dictionary<string, Sample> during, Dictionary<string, Sample> after, IReadOnlyList<(string Error, int Count)> flowErrors,
        int sessions, int welcomed, double sessionSeconds, int onlineReported, int sessionsAlive, Sample controllerBefore, Sample controllerDuring,
        int minutes, List<(double At, Dictionary<string, Sample> Samples)> soak, SoakStats soakStats, ErrorTally errors, string csvPath)
    {
        Console.WriteLine();
        Console.WriteLine(Inv($"{flows} concurrent TCP flows (echo, every byte checked): {openCount} open at once, {flowErrors.Sum(e => e.Count)} failed; opening took {openSeconds:F1} s, closing {closeSeconds:F1} s"));
        Console.WriteLine();
        Console.WriteLine("| process | RSS before MiB | RSS with flows MiB | KiB per flow | RSS after close MiB | fds before / with / after | CPU s while opening |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var name in new[] { "connector", "relay", "controller", "clients" })
        {
            var (b, d, a) = (before[name], during[name], after[name]);
            Console.WriteLine(Inv($"| {(name == "clients" ? "clients (sum)" : name)} | {b.RssKiB / 1024.0:F0} | {d.RssKiB / 1024.0:F0} | {(d.RssKiB - b.RssKiB) / (double)Math.Max(1, openCount):F1} | {a.RssKiB / 1024.0:F0} | {b.Fds} / {d.Fds} / {a.Fds} | {d.CpuSeconds - b.CpuSeconds:F1} |"));
        }
        foreach (var (error, count) in flowErrors.Take(5))
        {
            Console.WriteLine($"  flow error x{count}: {error}");
        }
        Console.WriteLine();
        Console.WriteLine(Inv($"{sessions} client sessions (service-account devices, real WebSocket sessions in one process) against one controller: {welcomed} welcomed with their policy in {sessionSeconds:F1} s, {onlineReported} online as /api/v1/devices reports, {sessionsAlive} still up at the end"));
        Console.WriteLine();
        Console.WriteLine("| process | RSS before MiB | RSS with sessions MiB | KiB per session | CPU s while connecting |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        Console.WriteLine(Inv($"| controller | {controllerBefore.RssKiB / 1024.0:F0} | {controllerDuring.RssKiB / 1024.0:F0} | {(controllerDuring.RssKiB - controllerBefore.RssKiB) / (double)Math.Max(1, welcomed):F1} | {controllerDuring.CpuSeconds - controllerBefore.CpuSeconds:F1} |"));
        if (minutes > 0 && soak.Count >= 3)
        {
            Console.WriteLine();
            Console.WriteLine(Inv($"Soak, {minutes} min, {flows} flow slots cycling and {sessions} sessions up: {soakStats.Flows} flows, {soakStats.Bytes / 1048576.0:F0} MiB checked both ways, {soakStats.Exchanges} exchanges, {errors.Total - flowErrors.Sum(e => e.Count)} errors; samples every 10 s"));
            Console.WriteLine();
            Console.WriteLine("| process | RSS first third MiB | RSS last third MiB | fds first third | fds last third | fds after soak | CPU s | flat? |");
            Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---|");
            // The first 30 s are the ramp (slots start over 10 s, flows live 10–30 s); the last sample is after every flow ended.
            var steady = soak.SkipLast(1).Where(s => s.At >= 30).ToList();
            steady = steady.Count >= 3 ? steady : [.. soak.SkipLast(1)];
            var third = Math.Max(1, steady.Count / 3);
            var first = steady.Take(third).ToArray();
            var last = steady.TakeLast(third).ToArray();
            foreach (var name in new[] { "connector", "relay", "controller", "clients" })
            {
                var rss1 = first.Average(s => s.Samples[name].RssKiB) / 1024;
                var rss2 = last.Average(s => s.Samples[name].RssKiB) / 1024;
                var fd1 = first.Average(s => s.Samples[name].Fds);
                var fd2 = last.Average(s => s.Samples[name].Fds);
                // Flat: the last third within 10 % (or 16 MiB / 50 descriptors) of the first.
                var flat = rss2 <= Math.Max(rss1 * 1.10, rss1 + 16) && fd2 <= Math.Max(fd1 * 1.10, fd1 + 50);
                Console.WriteLine(Inv($"| {name} | {rss1:F0} | {rss2:F0} | {fd1:F0} | {fd2:F0} | {soak[^1].Samples[name].Fds} | {soak[^1].Samples[name].CpuSeconds - soak[0].Samples[name].CpuSeconds:F0} | {(flat ? "yes" : "NO")} |"));
            }
        }
        var all = errors.Snapshot();
        Console.WriteLine();
        Console.WriteLine($"errors in total: {errors.Total}");
        foreach (var (error, count) in all.Take(10))
        {
            Console.WriteLine($"  x{count}: {error}");
        }
        Console.WriteLine($"samples: {csvPath}");
    }

    /// <summary>
    /// Runs one flow per target, at most <paramref name="opening"/> connecting at once: connect, one checked exchange, then
    /// <paramref name="hold"/> (still open), a second checked exchange, half-close, and the echo's end.
    /// </summary>
    private static async Task RunFlowsAsync((IPEndPoint Forward, long Id)[] targets, int opening, Func<long, Task> hold, ErrorTally errors, CancellationToken ct)
    {
        using var gate = new SemaphoreSlim(opening);
        await Task.WhenAll(targets.Select(async t =>
        {
            var released = false;
            await gate.WaitAsync(ct);
            try
            {
                using var flow = await EchoFlow.OpenAsync(t.Forward, t.Id, ct);
                await flow.ExchangeAsync(ct);
                gate.Release();
                released = true;
                await hold(t.Id);
                await flow.ExchangeAsync(ct);
                await flow.FinishAsync(ct);
            }
            catch (Exception e) when (e is IOException or SocketException or InvalidDataException or TimeoutException or OperationCanceledException && !ct.IsCancellationRequested)
            {
                errors.FlowFailed(e);
            }
            finally
            {
                if (!released)
                {
                    gate.Release();
                }
            }
        }));
    }

    /// <summary>One soak slot: flows one after another, each living 10–30 s with a checked exchange every 1 s to --pause-max-seconds (5 by default), until the end.</summary>
    private static async Task CycleAsync(IPEndPoint forward, int slot, int pauseMax, SoakStats stats, ErrorTally errors, CancellationToken end)
    {
        var random = new Random(slot);
        // Spread the slots' starts over 10 s so the soak does not open every flow in the same instant.
        try
        {
            await Task.Delay(random.Next(10_000), end);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        long id = (long)slot << 32;
        while (!end.IsCancellationRequested)
        {
            var life = Stopwatch.StartNew();
            var lifetime = TimeSpan.FromSeconds(10 + random.Next(20));
            try
            {
                // A flow in progress finishes even when the soak ends, so every started flow is checked to its end.
                using var bound = new CancellationTokenSource(TimeSpan.FromMinutes(1));
                using var flow = await EchoFlow.OpenAsync(forward, id++, bound.Token);
                do
                {
                    await flow.ExchangeAsync(bound.Token);
                    Interlocked.Increment(ref stats.Exchanges);
                    Interlocked.Add(ref stats.Bytes, 2 * ExchangeBytes);
                    try
                    {
                        await Task.Delay(1000 + random.Next((pauseMax - 1) * 1000), end);
                    }
                    catch (OperationCanceledException)
                    {
                        break;
                    }
                }
                while (life.Elapsed < lifetime);
                await flow.FinishAsync(bound.Token);
                Interlocked.Increment(ref stats.Flows);
            }
            catch (Exception e) when (e is IOException or SocketException or InvalidDataException or TimeoutException or OperationCanceledException)
            {
                errors.FlowFailed(e);
                // A failing path gets a pause, so one outage counts a few errors rather than a flood.
                try
                {
                    await Task.Delay(1000, end);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>A TCP connection to a client's forward whose bytes are deterministic per flow and checked as they come back.</summary>
    private sealed class EchoFlow : IDisposable
    {
        private readonly Socket _socket;
        private readonly long _id;
        private readonly byte[] _sent = new byte[ExchangeBytes];
        private readonly byte[] _back = new byte[ExchangeBytes];
        private int _round;

        private EchoFlow(Socket socket, long id)
        {
            _socket = socket;
            _id = id;
        }

        public static async Task<EchoFlow> OpenAsync(IPEndPoint forward, long id, CancellationToken ct)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
                timeout.CancelAfter(TimeSpan.FromSeconds(30));
                await socket.ConnectAsync(forward, timeout.Token);
                return new EchoFlow(socket, id);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }

        /// <summary>Sends the flow's next block and reads it back, comparing every byte; bounded at 30 s.</summary>
        public async Task ExchangeAsync(CancellationToken ct)
        {
            Fill(_sent, _id, _round++);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(30));
            await _socket.SendAsync(_sent, SocketFlags.None, timeout.Token);
            var got = 0;
            while (got < _back.Length)
            {
                var n = await _socket.ReceiveAsync(_back.AsMemory(got), SocketFlags.None, timeout.Token);
                if (n == 0)
                {
                    throw new InvalidDataException($"the echo ended after {got} of {_back.Length} bytes");
                }
                got += n;
            }
            if (!_back.AsSpan().SequenceEqual(_sent))
            {
                throw new InvalidDataException($"the echo differs from what was sent at byte {_back.AsSpan().CommonPrefixLength(_sent)}");
            }
        }

        /// <summary>Half-closes and waits for the echo's end, so the flow closed cleanly through every hop.</summary>
        public async Task FinishAsync(CancellationToken ct)
        {
            _socket.Shutdown(SocketShutdown.Send);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(30));
            var n = await _socket.ReceiveAsync(_back.AsMemory(0, 1), SocketFlags.None, timeout.Token);
            if (n != 0)
            {
                throw new InvalidDataException("bytes arrived after the echo should have ended");
            }
        }

        // xorshift64*, seeded by flow and round: every flow and round sends different bytes, so a crossed stream shows.
        private static void Fill(byte[] buffer, long id, int round)
        {
            var x = (ulong)id * 0x9E3779B97F4A7C15UL ^ (ulong)(round + 1) * 0xD1B54A32D192ED03UL ^ 0x2545F4914F6CDD1DUL;
            for (var i = 0; i < buffer.Length; i += 8)
            {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                BitConverter.TryWriteBytes(buffer.AsSpan(i), x * 0x2545F4914F6CDD1DUL);
            }
        }

        public void Dispose() => _socket.Dispose();
    }

    private static ChildProcess StartEchoServer()
    {
        var host = Environment.ProcessPath!;
        return Path.GetFileNameWithoutExtension(host) == "dotnet"
            ? ChildProcess.Start(host, [typeof(Scale).Assembly.Location, Command, "--echo-server"], name: "echo")
            : ChildProcess.Start(host, [Command, "--echo-server"], name: "echo");
    }

    /// <summary>The echo server as a child process: prints its address, then serves until killed.</summary>
    private static async Task<int> RunEchoServerAsync()
    {
        await using var echo = new EchoServer();
        Console.WriteLine($"echo listening on {echo.EndPoint}");
        await Task.Delay(Timeout.Infinite);
        return 0;
    }

    /// <summary>Echoes every byte back on each connection, with a small buffer per connection.</summary>
    private sealed class EchoServer : IAsyncDisposable
    {
        private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accept;

        public EchoServer()
        {
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(4096);
            _accept = Task.Run(AcceptAsync);
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndPoint!;

        private async Task AcceptAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                Socket socket;
                try
                {
                    socket = await _listener.AcceptAsync(_stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
                {
                    return;
                }
                catch (SocketException)
                {
                    continue;
                }
                _ = Task.Run(() => ServeAsync(socket));
            }
        }

        private async Task ServeAsync(Socket socket)
        {
            using (socket)
            {
                socket.NoDelay = true;
                var buffer = new byte[ExchangeBytes];
                try
                {
                    int n;
                    while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, _stop.Token)) > 0)
                    {
                        await socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token);
                    }
                    socket.Shutdown(SocketShutdown.Send);
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
                {
                    // The flow went away or the bench is stopping.
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Dispose();
            await _accept;
        }
    }

    /// <summary>
    /// Many client sessions in this one process: each signs in with the service account key as its own device, then holds a real
    /// controller session (WebSocket, hello, certificate, policy) through <see cref="ControllerSessionClient"/>, as a client daemon does.
    /// </summary>
    private sealed class SessionFleet(Uri controller, ControllerTrust trust, string key, ErrorTally errors) : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly List<Task> _sessions = [];
        private readonly HttpClient _http = new(trust.CreateHandler()) { Timeout = TimeSpan.FromSeconds(60) };
        private int _alive;

        public int Alive => Volatile.Read(ref _alive);

        /// <summary>Starts <paramref name="count"/> sessions (50 signing in at once) and returns how many got their welcome and policy within 3 minutes.</summary>
        public async Task<int> StartAsync(int count, CancellationToken ct)
        {
            var ready = 0;
            using var gate = new SemaphoreSlim(50);
            var waits = new List<Task>();
            for (var i = 0; i < count; i++)
            {
                var name = $"scale-{i}";
                var welcomed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _sessions.Add(RunAsync(name, gate, welcomed));
                waits.Add(welcomed.Task.ContinueWith(t => { if (t.IsCompletedSuccessfully) { Interlocked.Increment(ref ready); } }, TaskScheduler.Default));
            }
            await Task.WhenAll(waits).WaitAsync(TimeSpan.FromMinutes(3), ct).ContinueWith(_ => { }, TaskScheduler.Default);
            return Volatile.Read(ref ready);
        }

        private async Task RunAsync(string name, SemaphoreSlim gate, TaskCompletionSource welcomed)
        {
            var ct = _stop.Token;
            try
            {
                ClientLoginResult login;
                await gate.WaitAsync(ct);
                try
                {
                    using var response = await _http.PostAsJsonAsync(new Uri(controller, "/v1/client/login"), new ClientLoginRequest(null, null, key, name, null), ct);
                    if (!response.IsSuccessStatusCode)
                    {
                        throw new InvalidDataException($"sign-in refused: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(ct)}");
                    }
                    login = await response.Content.ReadFromJsonAsync<ClientLoginResult>(ct) ?? throw new InvalidDataException("empty sign-in answer");
                }
                finally
                {
                    gate.Release();
                }
                var session = new ControllerSessionClient(new ControllerEndpoints([controller]), trust, TimeProvider.System);
                var gotWelcome = false;
                session.OnWelcome = (_, _, _) =>
                {
                    gotWelcome = true;
                    return Task.CompletedTask;
                };
                session.OnMessage = (message, _, _) =>
                {
                    // The policy push: the bench's one resource, granted to the service account.
                    if (gotWelcome && message is ResourcesMessage resources && resources.Resources.Any(r => r.Name == "server"))
                    {
                        if (welcomed.TrySetResult())
                        {
                            Interlocked.Increment(ref _alive);
                        }
                    }
                    return Task.CompletedTask;
                };
                var outcome = await session.RunAsync(login.DeviceToken, ct);
                if (welcomed.Task.IsCompletedSuccessfully)
                {
                    Interlocked.Decrement(ref _alive);
                }
                errors.Add($"session ended: {outcome.Code}: {outcome.Reason}");
                welcomed.TrySetException(new InvalidDataException(outcome.Reason));
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                welcomed.TrySetCanceled(CancellationToken.None);
            }
            catch (Exception e) when (e is HttpRequestException or InvalidDataException or IOException or JsonException or System.Net.WebSockets.WebSocketException or OperationCanceledException)
            {
                errors.Add($"session: {e.GetType().Name}: {e.Message}");
                welcomed.TrySetException(e);
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (_stop.IsCancellationRequested)
            {
                return;
            }
            await _stop.CancelAsync();
            await Task.WhenAll(_sessions).WaitAsync(TimeSpan.FromSeconds(30)).ContinueWith(_ => { }, TaskScheduler.Default);
            _http.Dispose();
        }
    }

    /// <summary>Every error of the run, counted by message (numbers stripped, so one cause counts once).</summary>
    private sealed class ErrorTally
    {
        private readonly ConcurrentDictionary<string, int> _byMessage = new();
        private int _total;
        private int _flowsFailed;

        public int Total => Volatile.Read(ref _total);

        public int FlowsFailed => Volatile.Read(ref _flowsFailed);

        public void FlowFailed(Exception e)
        {
            Interlocked.Increment(ref _flowsFailed);
            Add($"flow: {e.GetType().Name}: {e.Message}");
        }

        public void Add(string message)
        {
            Interlocked.Increment(ref _total);
            var key = new string([.. message.Select(c => char.IsAsciiDigit(c) ? '#' : c)]);
            _byMessage.AddOrUpdate(key, 1, (_, n) => n + 1);
        }

        public IReadOnlyList<(string Error, int Count)> Snapshot() => [.. _byMessage.Select(kv => (kv.Key, kv.Value)).OrderByDescending(e => e.Value)];
    }

    private sealed class SoakStats
    {
        public long Flows;
        public long Exchanges;
        public long Bytes;
    }

    /// <summary>One process's resident memory, open descriptors and CPU time, from /proc.</summary>
    private readonly record struct Sample(long RssKiB, int Fds, double CpuSeconds)
    {
        private static readonly double TicksPerSecond = 100; // USER_HZ: 100 on every Linux architecture .NET runs on.

        public static Sample Read(int pid)
        {
            try
            {
                var rss = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
                var kib = long.Parse(rss.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
                var fds = Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Count();
                var stat = File.ReadAllText($"/proc/{pid}/stat");
                // Fields after the parenthesised command name: state is field 3, utime 14 and stime 15.
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                var cpu = (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / TicksPerSecond;
                return new Sample(kib, fds, cpu);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
            {
                return new Sample(0, 0, 0); // The process is gone; the table shows zeros rather than failing the run.
            }
        }
    }

    /// <summary>Controller, relay, connector and client processes, provisioned through the admin CLI as in the e2e bench.</summary>
    private sealed record Lab(ChildProcess Controller, ChildProcess Relay, ChildProcess Connector, List<(ChildProcess Process, IPEndPoint Forward)> Clients,
        Uri ControllerUrl, ControllerTrust Trust, string ServiceAccountKey, string ApiKey)
    {
        public static async Task<Lab> StartAsync(string ferry, string work, int serverPort, int clients, ConcurrentBag<ChildProcess> processes, CancellationToken ct)
        {
            var data = Path.Combine(work, "controller");
            var controller = ChildProcess.Start(ferry, ["controller", "--data", data, "--listen", "127.0.0.1:0"], name: "controller");
            processes.Add(controller);
            var url = (await controller.WaitForLineAsync("admin URL:", ct)).Split("admin URL:")[1].Trim().TrimEnd('/');
            var fingerprint = (await controller.WaitForLineAsync("TLS fingerprint:", ct)).Split("TLS fingerprint:")[1].Trim();
            var apiKey = (await File.ReadAllTextAsync(Path.Combine(data, "admin.key"), ct)).Trim();
            var env = new Dictionary<string, string>
            {
                ["FERRY_CONTROLLER"] = url,
                ["FERRY_CONTROLLER_FINGERPRINT"] = fingerprint,
                ["FERRY_API_KEY"] = apiKey,
            };
            async Task<string> Admin(params string[] args)
            {
                var r = await ChildProcess.RunAsync(ferry, ["admin", .. args], ct, env);
                return r.Code == 0 ? r.Output : throw new InvalidOperationException($"ferry admin {string.Join(' ', args)}: {r.Output}");
            }
            var relayTokens = Path.Combine(work, "relay.json");
            await File.WriteAllTextAsync(relayTokens, await Admin("relay", "provision", "--name", "r1", "--json"), ct);
            var relay = ChildProcess.Start(ferry, ["relay", "--tokens", relayTokens, "--state", Path.Combine(work, "relay-state"), "--listen", "127.0.0.1:0", "--stun", "127.0.0.1:0"], name: "relay");
            processes.Add(relay);
            await relay.WaitForLineAsync("Relay links accepted", ct);
            await Admin("network", "create", "bench");
            await Admin("resource", "add", "127.0.0.1", "--network", "bench", "--name", "server", "--tcp", serverPort.ToString(CultureInfo.InvariantCulture));
            var key = JsonDocument.Parse(await Admin("service-account", "create", "bench", "--json")).RootElement.GetProperty("key").GetString()!;
            await Admin("policy", "grant", "server", "--service-account", "bench");
            var connectorTokens = Path.Combine(work, "connector.json");
            await File.WriteAllTextAsync(connectorTokens, await Admin("connector", "provision", "--network", "bench", "--name", "c1", "--json"), ct);
            var connector = ChildProcess.Start(ferry, ["connector", "--tokens", connectorTokens, "--state", Path.Combine(work, "connector-state")], name: "connector");
            processes.Add(connector);
            await connector.WaitForLineAsync("STUN discovery", ct);

            var started = new List<(ChildProcess, IPEndPoint)>();
            for (var i = 0; i < clients; i++)
            {
                var name = $"bench{i}";
                // Every other client stays on the relay, so the relay carries flows too.
                string[] extra = i % 2 == 1 ? ["--direct", "off"] : [];
                var client = ChildProcess.Start(ferry, ["client", "--state", Path.Combine(work, name), "up", "--socks", "off", "--device-name", name,
                    "--forward", $"0=127.0.0.1:{serverPort}", .. extra], new Dictionary<string, string>(env) { ["FERRY_SERVICE_ACCOUNT_KEY"] = key }, name);
                processes.Add(client);
                var line = await client.WaitForLineAsync(" listening on ", ct);
                started.Add((client, IPEndPoint.Parse(line[(line.LastIndexOf(' ') + 1)..])));
            }
            return new Lab(controller, relay, connector, started, new Uri(url), ControllerTrust.Create(fingerprint, null), key, apiKey);
        }

        /// <summary>How many devices named <paramref name="prefix"/>… the controller reports online, polled until <paramref name="expected"/> or 60 s.</summary>
        public async Task<int> CountOnlineAsync(string prefix, int expected, CancellationToken ct)
        {
            using var http = new HttpClient(Trust.CreateHandler()) { Timeout = TimeSpan.FromSeconds(60) };
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", ApiKey);
            var online = 0;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            do
            {
                using var devices = JsonDocument.Parse(await http.GetStringAsync(new Uri(ControllerUrl, "/api/v1/devices"), ct));
                online = devices.RootElement.EnumerateArray().Count(d =>
                    d.GetProperty("name").GetString()!.StartsWith(prefix, StringComparison.Ordinal) && d.GetProperty("online").GetBoolean());
                if (online >= expected)
                {
                    break;
                }
                await Task.Delay(500, ct);
            }
            while (DateTime.UtcNow < deadline);
            return online;
        }
    }

    /// <summary>Raises this process's open-file limit (soft and hard, as root) so children inherit it; returns the soft limit in force.</summary>
    private static async Task<string> RaiseDescriptorLimitAsync(CancellationToken ct)
    {
        var pid = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        await ChildProcess.RunAsync("prlimit", ["--pid", pid, "--nofile=1048576:1048576"], ct);
        var shown = await ChildProcess.RunAsync("prlimit", ["--pid", pid, "--nofile", "--noheadings", "--output", "SOFT"], ct);
        return shown.Output.Trim();
    }

    /// <summary>The host's count of UDP datagrams dropped because a socket's receive buffer was full (RcvbufErrors in /proc/net/snmp).</summary>
    private static long UdpReceiveBufferDrops()
    {
        var lines = File.ReadAllLines("/proc/net/snmp").Where(l => l.StartsWith("Udp:", StringComparison.Ordinal)).ToArray();
        var names = lines[0].Split(' ');
        var values = lines[1].Split(' ');
        return long.Parse(values[Array.IndexOf(names, "RcvbufErrors")], CultureInfo.InvariantCulture);
    }


}
