using static Ferry.Benchmarks.BenchSupport;
using System.Globalization;
using System.Runtime.InteropServices;
using Ferry.Benchmarks;
using Ferry.Quic;

// dotnet run -c Release --project bench/Ferry.Benchmarks -- all     (every case below in turn, with its defaults)
// dotnet run -c Release --project bench/Ferry.Benchmarks -- quic [--size-mib 256] [--runs 5] [--requests 1000] [--connections 200]
// dotnet run -c Release --project bench/Ferry.Benchmarks -- time-to-direct [--runs 3]   (as root: network namespaces)
// dotnet run -c Release --project bench/Ferry.Benchmarks -- failover [--runs 3]
// dotnet run -c Release --project bench/Ferry.Benchmarks -- e2e [--runs 3] [--size-mib 128] [--requests 2000] [--connections 200]   (as root: also ssh -L and wireguard-go in a namespace)
// dotnet run -c Release --project bench/Ferry.Benchmarks -- micro [BenchmarkDotNet options, e.g. --filter '*Stun*']
// dotnet run -c Release --project bench/Ferry.Benchmarks -- scale [--flows 10000] [--clients 1000] [--minutes 1] [--flows-per-process 2500]
if (args is ["all"])
{
    // Each case in its own process: one case's sockets, threads and heap must not colour the next one's figures.
    var results = new List<(string Case, int Code)>();
    foreach (var name in new[] { "quic", EndToEnd.Command, "time-to-direct", "failover", "scale", Micro.Command })
    {
        Console.WriteLine($"\n==> {name}");
        using var child = System.Diagnostics.Process.Start(Environment.ProcessPath!, [name])!;
        await child.WaitForExitAsync();
        results.Add((name, child.ExitCode));
    }
    Console.WriteLine();
    foreach (var (name, code) in results)
    {
        Console.WriteLine($"{name}: {(code == 0 ? "done" : $"failed (exit {code})")}");
    }
    return results.All(r => r.Code == 0) ? 0 : 1;
}

if (args is [Micro.Command, ..])
{
    return Micro.Run(args);
}

if (args is [EndToEnd.Command, ..])
{
    return await EndToEnd.RunAsync(args);
}

if (args is [Scale.Command, ..])
{
    return await Scale.RunAsync(args);
}

if (args is [{ } command, ..] && HarnessFigure.All.FirstOrDefault(f => f.Command == command) is { } figure)
{
    return await figure.RunAsync(args);
}

var options = Options.Parse(args);
if (options is null)
{
    Console.Error.WriteLine("usage: Ferry.Benchmarks all\n       Ferry.Benchmarks quic [--size-mib N] [--runs N] [--requests N] [--connections N]\n       Ferry.Benchmarks time-to-direct [--runs N]\n       Ferry.Benchmarks failover [--runs N]\n       Ferry.Benchmarks e2e [--runs N] [--size-mib N] [--requests N] [--connections N]\n       Ferry.Benchmarks scale [--flows N] [--clients N] [--minutes N] [--flows-per-process N]\n       Ferry.Benchmarks micro [BenchmarkDotNet options]");
    return 2;
}

if (!QuicSupport.IsSupported)
{
    Console.Error.WriteLine($"error: QUIC is not available: {QuicSupport.NotSupportedReason}");
    return 1;
}

using var overall = new CancellationTokenSource(TimeSpan.FromMinutes(30));
var ct = overall.Token;
using var pki = new BenchPki();
await using var quic = new QuicTarget(pki);
await using var tls = new TcpTarget(pki, tls: true);
await using var tcp = new TcpTarget(pki, tls: false);

var chunk = new byte[256 * 1024];
new Random(1).NextBytes(chunk);
long size = (long)options.SizeMiB << 20;

var bulk = new (string Name, Func<long, Task<TimeSpan>> Run)[]
{
    ("Ferry QUIC, one stream", s => quic.BulkAsync(s, chunk, ct)),
    ("TCP + TLS 1.3 (SslStream)", s => tls.BulkAsync(s, chunk, ct)),
    ("plain TCP", s => tcp.BulkAsync(s, chunk, ct)),
};
var setup = new (string Name, int Count, Func<int, Task<TimeSpan>> Run)[]
{
    ("QUIC: new stream on an open connection", options.Requests, n => quic.StreamRequestsAsync(n, ct)),
    ("QUIC: new connection (mutual TLS) per request", options.Connections, n => quic.ConnectionRequestsAsync(n, ct)),
    ("TLS: new TCP + TLS 1.3 connection (mutual) per request", options.Connections, n => tls.ConnectionRequestsAsync(n, ct)),
    ("TLS: request on an open TLS connection", options.Requests, n => tls.PingsOnExistingConnectionAsync(n, ct)),
};

Console.WriteLine($"Ferry.Benchmarks quic: {RuntimeInformation.FrameworkDescription}, {RuntimeInformation.OSDescription}, {Environment.ProcessorCount} CPUs, ngtcp2 {QuicSupport.Ngtcp2Version}");
Console.WriteLine($"bulk: {options.SizeMiB} MiB x {options.Runs} runs; setup: {options.Requests} requests (streams) / {options.Connections} connections x {options.Runs} runs; cases interleaved per run");

// Warm-up: JIT, TLS caches, socket buffers; results discarded.
foreach (var c in bulk)
{
    await c.Run(32L << 20).WaitAsync(TimeSpan.FromMinutes(2), ct);
}

foreach (var c in setup)
{
    await c.Run(Math.Max(1, c.Count / 10)).WaitAsync(TimeSpan.FromMinutes(2), ct);
}

var bulkResults = bulk.Select(_ => new List<double>()).ToArray();
var setupResults = setup.Select(_ => new List<double>()).ToArray();
for (int run = 0; run < options.Runs; run++)
{
    for (int i = 0; i < bulk.Length; i++)
    {
        var elapsed = await bulk[i].Run(size).WaitAsync(TimeSpan.FromMinutes(5), ct);
        bulkResults[i].Add(options.SizeMiB / elapsed.TotalSeconds);
    }

    for (int i = 0; i < setup.Length; i++)
    {
        var elapsed = await setup[i].Run(setup[i].Count).WaitAsync(TimeSpan.FromMinutes(5), ct);
        setupResults[i].Add(elapsed.TotalMicroseconds / setup[i].Count);
    }

    Console.Error.WriteLine($"run {run + 1}/{options.Runs} done");
}

Console.WriteLine();
Console.WriteLine($"Single-stream throughput, {options.SizeMiB} MiB one way on loopback (MiB/s, higher is better)");
Console.WriteLine();
Console.WriteLine("| case | median MiB/s | min – max | vs TCP+TLS | vs plain TCP |");
Console.WriteLine("|---|---:|---:|---:|---:|");
double tlsBulk = Stats.Median(bulkResults[1]);
double tcpBulk = Stats.Median(bulkResults[2]);
for (int i = 0; i < bulk.Length; i++)
{
    var m = Stats.Median(bulkResults[i]);
    Console.WriteLine(Inv($"| {bulk[i].Name} | {m:F0} | {bulkResults[i].Min():F0} – {bulkResults[i].Max():F0} | {m / tlsBulk:F2}× | {m / tcpBulk:F2}× |"));
}

Console.WriteLine();
Console.WriteLine("Per-request setup: one byte each way (µs per request, lower is better)");
Console.WriteLine();
Console.WriteLine("| case | median µs | min – max | vs new TLS connection | vs open TLS connection |");
Console.WriteLine("|---|---:|---:|---:|---:|");
double newTls = Stats.Median(setupResults[2]);
double openTls = Stats.Median(setupResults[3]);
for (int i = 0; i < setup.Length; i++)
{
    var m = Stats.Median(setupResults[i]);
    Console.WriteLine(Inv($"| {setup[i].Name} | {m:F0} | {setupResults[i].Min():F0} – {setupResults[i].Max():F0} | {m / newTls:F2}× | {m / openTls:F2}× |"));
}

return 0;


/// <summary>Command-line settings of the quic suite.</summary>
internal sealed record Options(int SizeMiB, int Runs, int Requests, int Connections)
{
    public static Options? Parse(string[] args)
    {
        if (args.Length == 0 || args[0] != "quic")
        {
            return null;
        }

        var o = new Options(256, 5, 1000, 200);
        for (int i = 1; i + 1 < args.Length; i += 2)
        {
            if (!int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out int v) || v <= 0)
            {
                return null;
            }

            o = args[i] switch
            {
                "--size-mib" => o with { SizeMiB = v },
                "--runs" => o with { Runs = v },
                "--requests" => o with { Requests = v },
                "--connections" => o with { Connections = v },
                _ => null,
            };
            if (o is null)
            {
                return null;
            }
        }

        return args.Length % 2 == 1 ? o : null;
    }
}

/// <summary>Order statistics of a run series.</summary>
internal static class Stats
{
    public static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
