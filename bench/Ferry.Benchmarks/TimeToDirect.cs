using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Ferry.Benchmarks;

/// <summary>
/// Time from a client's first flow to its direct path carrying traffic, per NAT topology. The topologies are the network
/// tests' own (tests/Ferry.NetworkTests, DirectPathTests: namespaces, NAT routers, real ferry processes): each run of them
/// appends one line per topology that ended direct to the file named by FERRY_BENCH_TIME_TO_DIRECT, which this sums up.
/// Needs root, like the tests.
/// </summary>
internal static class TimeToDirect
{
    public static async Task<int> RunAsync(string[] args)
    {
        int runs = 3;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--runs" && i + 1 < args.Length && int.TryParse(args[++i], CultureInfo.InvariantCulture, out var n) && n > 0)
            {
                runs = n;
            }
            else
            {
                Console.Error.WriteLine("usage: Ferry.Benchmarks time-to-direct [--runs N]");
                return 2;
            }
        }
        var root = FindRoot();
        if (root is null)
        {
            Console.Error.WriteLine("error: run from inside the Ferry checkout (Ferry.slnx not found above the current folder)");
            return 2;
        }
        var results = Path.Combine(Path.GetTempPath(), $"ferry-time-to-direct-{Environment.ProcessId}.jsonl");
        File.Delete(results);
        Console.WriteLine($"Ferry.Benchmarks time-to-direct: {runs} runs of the DirectPathTests topologies (tests/Ferry.NetworkTests), {Environment.ProcessorCount} CPUs");
        for (int run = 1; run <= runs; run++)
        {
            var info = new ProcessStartInfo("dotnet") { WorkingDirectory = root, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var arg in new[] { "test", "tests/Ferry.NetworkTests", "--filter", "FullyQualifiedName~DirectPathTests", "-nologo" })
            {
                info.ArgumentList.Add(arg);
            }
            info.Environment["FERRY_BENCH_TIME_TO_DIRECT"] = results;
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(20));
            await process.WaitForExitAsync(timeout.Token);
            var summary = (await stdout).Split('\n').LastOrDefault(l => l.Contains("Passed!", StringComparison.Ordinal) || l.Contains("Failed!", StringComparison.Ordinal))?.Trim();
            Console.Error.WriteLine($"run {run}/{runs}: {summary ?? "no test summary"}");
            if (process.ExitCode != 0)
            {
                Console.Error.WriteLine((await stdout) + await stderr);
                Console.Error.WriteLine("error: the network tests failed; their figures are not trustworthy");
                return 1;
            }
        }
        var samples = File.Exists(results)
            ? File.ReadAllLines(results).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement)
                .Select(e => (Topology: e.GetProperty("topology").GetString()!, Ms: e.GetProperty("directAfterMs").GetDouble())).ToList()
            : [];
        File.Delete(results);
        if (samples.Count == 0)
        {
            Console.Error.WriteLine("error: no topology reported a direct path (not root? the tests skip without namespaces)");
            return 1;
        }
        Console.WriteLine();
        Console.WriteLine("Time from the first flow to the direct path in use (ms, lower is better)");
        Console.WriteLine();
        Console.WriteLine("| topology | runs | median ms | min – max |");
        Console.WriteLine("|---|---:|---:|---:|");
        foreach (var group in samples.GroupBy(s => s.Topology).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var values = group.Select(s => s.Ms).Order().ToList();
            var median = values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {group.Key} | {values.Count} | {median:0} | {values[0]:0} – {values[^1]:0} |"));
        }
        return 0;
    }

    private static string? FindRoot()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx")))
            {
                return dir.FullName;
            }
        }
        return null;
    }
}
