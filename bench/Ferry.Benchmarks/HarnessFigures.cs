using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Ferry.Benchmarks;

/// <summary>
/// A figure the test harness measures while it checks behaviour: the tests run with <see cref="EnvironmentVariable"/> naming
/// a file, append one JSON line per case (<see cref="CaseField"/> names it, <see cref="ValueField"/> is the figure in ms,
/// and <see cref="ReferenceField"/>, when set, is the reference measured in the same run), and this sums them up.
/// </summary>
internal sealed record HarnessFigure(
    string Command,
    string Title,
    string TestProject,
    string Filter,
    string EnvironmentVariable,
    string CaseField,
    string ValueField,
    string? ReferenceField,
    string ReferenceTitle,
    string NoSamples)
{
    /// <summary>
    /// Time from a client's first flow to its direct path carrying traffic, per NAT topology: the network tests' own topologies
    /// (tests/Ferry.NetworkTests, DirectPathTests: namespaces, NAT routers, real ferry processes). Needs root, like the tests.
    /// </summary>
    public static readonly HarnessFigure TimeToDirect = new(
        "time-to-direct", "Time from the first flow to the direct path in use", "tests/Ferry.NetworkTests", "FullyQualifiedName~DirectPathTests",
        "FERRY_BENCH_TIME_TO_DIRECT", "topology", "directAfterMs", null, "", "no topology reported a direct path (not root? the tests skip without namespaces)");

    /// <summary>
    /// Time from killing the connector a client uses to that client's next flow completing through another connector
    /// (tests/Ferry.IntegrationTests, ConnectorClusterTests: real processes on loopback), against the same client's first
    /// flow (ticket, relay binding and QUIC handshake from cold) as the reference.
    /// </summary>
    public static readonly HarnessFigure Failover = new(
        "failover", "Time from a client's connector dying (killed or frozen) to its next flow done through another", "tests/Ferry.IntegrationTests",
        "FullyQualifiedName~ConnectorClusterTests.When_the_connector|FullyQualifiedName~ConnectorClusterTests.A_client_uses_the_nearest",
        "FERRY_BENCH_FAILOVER", "case", "failoverMs", "firstFlowMs", "first flow from cold", "no failover case reported (did the cluster tests run?)");

    public static readonly HarnessFigure[] All = [TimeToDirect, Failover];

    public async Task<int> RunAsync(string[] args)
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
                Console.Error.WriteLine($"usage: Ferry.Benchmarks {Command} [--runs N]");
                return 2;
            }
        }
        var root = BenchSupport.FindRoot();
        if (root is null)
        {
            Console.Error.WriteLine("error: run from inside the Ferry checkout (Ferry.slnx not found above the current folder)");
            return 2;
        }
        var results = Path.Combine(Path.GetTempPath(), $"ferry-{Command}-{Environment.ProcessId}.jsonl");
        File.Delete(results);
        Console.WriteLine($"Ferry.Benchmarks {Command}: {runs} runs of {Filter} ({TestProject}), {Environment.ProcessorCount} CPUs");
        for (int run = 1; run <= runs; run++)
        {
            var info = new ProcessStartInfo("dotnet") { WorkingDirectory = root, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var arg in new[] { "test", TestProject, "--filter", Filter, "-nologo" })
            {
                info.ArgumentList.Add(arg);
            }
            info.Environment[EnvironmentVariable] = results;
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
                Console.Error.WriteLine("error: the tests failed; their figures are not trustworthy");
                return 1;
            }
        }
        var samples = File.Exists(results)
            ? File.ReadAllLines(results).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement)
                .Select(e => (Case: e.GetProperty(CaseField).GetString()!, Ms: e.GetProperty(ValueField).GetDouble(),
                    Reference: ReferenceField is null ? double.NaN : e.GetProperty(ReferenceField).GetDouble())).ToList()
            : [];
        File.Delete(results);
        if (samples.Count == 0)
        {
            Console.Error.WriteLine("error: " + NoSamples);
            return 1;
        }
        Console.WriteLine();
        Console.WriteLine($"{Title} (ms, lower is better)");
        Console.WriteLine();
        Console.WriteLine(ReferenceField is null ? $"| {CaseField} | runs | median ms | min – max |" : $"| {CaseField} | runs | median ms | min – max | {ReferenceTitle}, median ms | ratio |");
        Console.WriteLine(ReferenceField is null ? "|---|---:|---:|---:|" : "|---|---:|---:|---:|---:|---:|");
        foreach (var group in samples.GroupBy(s => s.Case).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var values = group.Select(s => s.Ms).Order().ToList();
            var median = Median(values);
            var line = string.Create(CultureInfo.InvariantCulture, $"| {group.Key} | {values.Count} | {median:0} | {values[0]:0} – {values[^1]:0} |");
            if (ReferenceField is not null)
            {
                var reference = Median([.. group.Select(s => s.Reference).Order()]);
                line += string.Create(CultureInfo.InvariantCulture, $" {reference:0} | {median / reference:0.00} |");
            }
            Console.WriteLine(line);
        }
        return 0;
    }

    private static double Median(List<double> sorted)
        => sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;

}
