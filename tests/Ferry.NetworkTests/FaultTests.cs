using System.Diagnostics;
using Ferry.Core.ControlPlane;
using Ferry.NetworkTests.Infrastructure;

namespace Ferry.NetworkTests;

/// <summary>
/// Issue 11, faults on a live connection: loss, delay and reordering on the direct path, a black hole that comes and goes,
/// a NAT mapping that expires, and a relay killed under a relayed flow. In each, the one TCP stream through the client's
/// port forward must come back byte for byte on the connection it started on, and the path must end where the fault
/// leaves it a way to go (direct when direct works again, the other relay when one dies).
/// </summary>
public sealed class FaultTests
{
    private static readonly TimeSpan ToDirect = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan BackToRelay = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan BackToDirect = TimeSpan.FromSeconds(30);
    // A NAT that renumbers its ports strands the srflx address the connector knows; the client re-offers every 30 s while nothing direct answers.
    private static readonly TimeSpan DirectAfterRenumbering = TimeSpan.FromSeconds(50);
    private static readonly TimeSpan OtherRelay = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan Drain = TimeSpan.FromSeconds(30);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Loss_delay_and_reordering_on_the_direct_path_keep_the_stream_intact_and_the_path_direct()
    {
        NetworkLab.RequireAvailable();
        // The client rightly prefers a relay quicker than the impaired direct path (+40 ms a round trip here); a relay 160 ms
        // slower a round trip leaves direct the better path throughout, so staying direct is what must hold.
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat, new DirectPathLabOptions { RelayLinkDelay = TimeSpan.FromMilliseconds(40) });
        var transfer = await StartAsync(lab);
        var direct = await lab.WaitForPathAsync("direct", ToDirect, transfer, "both NATs map endpoint-independently and the relay is 160 ms slower");
        await lab.RequireCarriedByAsync("direct", transfer, "before the impairment");

        // netem 'loss 5% delay 20ms 10ms reorder 25%' on the public router, both ways, for UDP between the two sites only.
        var impairment = new Impairment(Loss: 0.05, Delay: TimeSpan.FromMilliseconds(20), Jitter: TimeSpan.FromMilliseconds(10), Reorder: 0.25);
        var impaired = await lab.ImpairDirectAsync(impairment);
        var (kinds, sampling) = SamplePaths(lab);

        // A flow opened now has to open and finish through the impairment, as the first one keeps going.
        await using (var second = await lab.StartTransferAsync())
        {
            await second.WaitForProgressAsync(256 * 1024, TimeSpan.FromSeconds(30), "(second flow, opened under the impairment)", lab.Diagnostics);
            await second.CompleteAsync(Drain, lab.Diagnostics);
            Report($"second flow under the impairment: {second}");
        }
        var under = await RequireCarriedDirectAsync(lab, transfer, $"under {impairment}");
        await lab.RequireCarriedByAsync("direct", transfer, $"under {impairment}, a second window");
        var samples = await StopSamplingAsync(kinds, sampling);
        var queue = impaired.Queue;
        Assert.True(queue.Fault is null && queue.Dropped > 0 && queue.Prompt > 0 && queue.Delayed > queue.Prompt,
            $"the impairment must have acted on the direct path's packets: {queue}{lab.Diagnostics()}");
        Report($"{lab.Name} under {impairment}: {queue}; direct RTT {direct.DirectRttMs} ms before, {under.DirectRttMs} ms under it; path samples: {Summarize(samples)}");
        // Leaving direct is allowed only with a reason; the client logs one whenever it moves to the relay.
        var relayedLines = lab.ClientPathLines().Where(l => l.Contains(": relayed (", StringComparison.Ordinal)).ToList();
        Assert.True(samples.All(s => s == "direct") || relayedLines.Count > 0,
            $"the path left direct under the impairment ({Summarize(samples)}) without the client saying why{lab.Diagnostics()}");
        await impaired.DisposeAsync();

        await FinishAsync(lab, transfer, flows: 2);
    }

    [Fact]
    public async Task A_five_second_black_hole_moves_the_stream_to_a_lossy_relay_and_back_to_direct_while_a_path_outside_it_sees_nothing()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat, new DirectPathLabOptions { SecondClientSite = true });
        var transfer = await StartAsync(lab);
        var direct = await lab.WaitForPathAsync("direct", ToDirect, transfer, "both NATs map endpoint-independently");
        await lab.RequireCarriedByAsync("direct", transfer, "before the black hole");

        // A second client behind the connector's router: its direct path never crosses the public router where the hole is.
        var neighbour = await lab.StartSecondClientAsync();
        var neighbourTransfer = await lab.StartTransferAsync(neighbour);
        var neighbourBefore = await lab.WaitForPathAsync("direct", ToDirect, neighbourTransfer, "the second client shares a router with the connector", neighbour.State);

        // 2 % of the relay links' TCP segments are lost from here on: the relay the stream falls back to is lossy too.
        await lab.DropOnRelayLinksAsync(0.02);
        var hole = Stopwatch.StartNew();
        await lab.CutDirectAsync();
        var relayed = await lab.WaitForPathAsync("relayed", BackToRelay, transfer, "the direct path fell into a black hole");
        var fallback = hole.Elapsed;
        await using (var during = await lab.StartTransferAsync())
        {
            await during.WaitForProgressAsync(256 * 1024, TimeSpan.FromSeconds(30), "(second flow, opened in the black hole)", lab.Diagnostics);
            await during.CompleteAsync(Drain, lab.Diagnostics);
            Report($"second flow in the black hole: {during}");
        }
        await lab.RequireCarriedByAsync("relayed", transfer, "in the black hole");
        var holeLasted = hole.Elapsed;
        Assert.True(relayed.Migrations > direct.Migrations, $"moving to the relay must count as a migration (was {direct.Migrations}, now {relayed.Migrations}){lab.Diagnostics()}");

        await lab.RestoreDirectAsync();
        var restored = Stopwatch.StartNew();
        var again = await lab.WaitForPathAsync("direct", BackToDirect, transfer, "the black hole is gone", also: p => p.Migrations > relayed.Migrations);
        var backAfter = restored.Elapsed;
        await lab.RequireCarriedByAsync("direct", transfer, "after the black hole");
        Assert.True(DirectPathLab.RemoteHost(again) == DirectPathLab.ConnectorWan, $"the direct path must go to {DirectPathLab.ConnectorWan} again; it goes to {again.Remote}{lab.Diagnostics()}");

        // The neighbour's path never moved, and its stream went on intact.
        var neighbourAfter = await lab.PathAsync(neighbour.State);
        Assert.True(neighbourAfter is { Kind: "direct" } && neighbourAfter.Migrations == neighbourBefore.Migrations && neighbourAfter.Remote == neighbourBefore.Remote,
            $"the second client's path is outside the black hole and must not have moved: before {DirectPathLab.Describe(neighbourBefore)}, after {DirectPathLab.Describe(neighbourAfter)}{lab.Diagnostics()}");
        await neighbourTransfer.CompleteAsync(Drain, lab.Diagnostics);

        Report($"{lab.Name}: black hole of {holeLasted.TotalSeconds:0.0} s; relayed {fallback.TotalSeconds:0.0} s after it opened, direct again {backAfter.TotalSeconds:0.0} s after it closed; "
            + $"neighbour (path {neighbourBefore.Remote}, {neighbourAfter.Migrations} migrations throughout): {neighbourTransfer}");
        await FinishAsync(lab, transfer, flows: 2);
    }

    [Fact]
    public async Task A_client_nat_mapping_that_expires_mid_connection_leaves_the_stream_intact_and_the_path_direct_again()
    {
        NetworkLab.RequireAvailable();
        Assert.SkipUnless(DirectPathLab.HasConntrack, "this test flushes NAT mappings with 'conntrack' (Debian package conntrack)");
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat);
        var transfer = await StartAsync(lab);
        var direct = await lab.WaitForPathAsync("direct", ToDirect, transfer, "both NATs map endpoint-independently");
        await lab.RequireCarriedByAsync("direct", transfer, "before the mapping expired");

        // The mapping goes and the next packet makes it again on the same public port: the path must not even notice.
        await lab.ExpireClientNatMappingsAsync(newPorts: false);
        await lab.RequireCarriedByAsync("direct", transfer, "after the mapping was made again on the same port");

        // The mapping goes and comes back on another public port. The connector's NAT only lets in what answers its own
        // packets, so the client's packets from the new port are dropped there until the connector is told the new address.
        var (kinds, sampling) = SamplePaths(lab);
        var renumbered = Stopwatch.StartNew();
        await lab.ExpireClientNatMappingsAsync(newPorts: true);
        await transfer.WaitForProgressAsync(512 * 1024, TimeSpan.FromSeconds(30), "after the client's NAT renumbered its ports", lab.Diagnostics);
        var again = await WaitForDirectCarryingAsync(lab, transfer, DirectAfterRenumbering, "the client's NAT renumbered its ports");
        var backAfter = renumbered.Elapsed;
        var samples = await StopSamplingAsync(kinds, sampling);
        var mappings = await lab.ClientNatMappingsAsync();
        Assert.True(Enumerable.Range(DirectPathLab.RenumberedPortLow, DirectPathLab.RenumberedPortHigh - DirectPathLab.RenumberedPortLow + 1)
                .Any(port => mappings.Contains($"dst={DirectPathLab.ClientWan} sport={again.Remote?.Split(':')[^1]} dport={port} ", StringComparison.Ordinal)),
            $"premise: the direct path must now run over a renumbered public port ({DirectPathLab.RenumberedPortLow}-{DirectPathLab.RenumberedPortHigh}) of the client's NAT; its UDP mappings:\n{mappings}{lab.Diagnostics()}");

        Report($"{lab.Name}: after the client's NAT renumbered, direct again (to {again.Remote}, {again.Migrations} migrations, {direct.Migrations} before) after {backAfter.TotalSeconds:0.0} s; "
            + $"path samples: {Summarize(samples)}");
        await FinishAsync(lab, transfer, flows: 1);
    }

    [Fact]
    public async Task A_relay_killed_under_a_relayed_stream_hands_it_to_the_other_relay_intact()
    {
        NetworkLab.RequireAvailable();
        // No UDP for the client: its connection can only be relayed, and the relays are all it has.
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat, new DirectPathLabOptions { BlockClientUdp = true, TwoRelays = true });
        await lab.StartFerryAsync();
        var transfer = await lab.StartTransferAsync();
        var relayed = await lab.WaitForPathAsync("relayed", TimeSpan.FromSeconds(10), transfer, "the client has no UDP");
        await lab.RequireCarriedByAsync("relayed", transfer, "before the relay died");
        var (carrying, _, otherIdentity) = await lab.RelaysByPathAsync(relayed);

        // The promise (src/Ferry.Relay/ARCHITECTURE.md, liveness and failover): both peers bind every ticket on every relay,
        // so when one dies their next packets take the other; the QUIC connection, and the flow in it, carry on.
        var killed = Stopwatch.StartNew();
        var stallBefore = transfer.LongestStall;
        carrying.Kill();
        await transfer.WaitForProgressAsync(64 * 1024, TimeSpan.FromSeconds(30), $"after {relayed.Remote} was killed", lab.Diagnostics);
        var resumed = killed.Elapsed;
        var moved = await lab.WaitForPathAsync("relayed", OtherRelay, transfer, $"{relayed.Remote} was killed", also: p => p.Remote == otherIdentity);
        await lab.RequireCarriedByAsync("relayed", transfer, "after the relay died");

        Report($"{lab.Name}, two relays: {relayed.Remote} killed; the stream came back within {resumed.TotalMilliseconds:0} ms (longest stall {transfer.LongestStall.TotalMilliseconds:0} ms, {stallBefore.TotalMilliseconds:0} ms before), now on {moved.Remote}");
        await FinishAsync(lab, transfer, flows: 1);
    }

    /// <summary>Checks the lab's premise with plain UDP sockets (so a failure later points at Ferry), then starts Ferry and the stream.</summary>
    private static async Task<ContinuousTransfer> StartAsync(DirectPathLab lab)
    {
        var probe = await lab.ProbeDirectUdpAsync();
        Assert.True(probe.DirectPossible, $"premise: two endpoint-independent NATs must let plain UDP sockets reach each other; {probe}");
        await lab.StartFerryAsync();
        return await lab.StartTransferAsync();
    }

    /// <summary>Waits for the status to say direct and a window of the stream to be carried by UDP; a window judged mid-switch is judged again.</summary>
    private static async Task<PathStatus> WaitForDirectCarryingAsync(DirectPathLab lab, ContinuousTransfer transfer, TimeSpan bound, string why)
    {
        var deadline = DateTime.UtcNow + bound;
        while (true)
        {
            var path = await lab.WaitForPathAsync("direct", deadline - DateTime.UtcNow, transfer, why);
            try
            {
                await lab.RequireCarriedByAsync("direct", transfer, $"once direct again ({why})");
                return path;
            }
            catch (Xunit.Sdk.XunitException) when (DateTime.UtcNow < deadline && transfer.Fault is null)
            {
                // Relay and direct both carried part of the window: judge the next one.
            }
        }
    }

    private static async Task<PathStatus> RequireCarriedDirectAsync(DirectPathLab lab, ContinuousTransfer transfer, string when)
        => await WaitForDirectCarryingAsync(lab, transfer, BackToDirect, when);

    /// <summary>Reads the client's path kind every 250 ms until stopped, so a detour between two checks is seen.</summary>
    private static (List<string> Kinds, (CancellationTokenSource Stop, Task Loop)) SamplePaths(DirectPathLab lab)
    {
        var kinds = new List<string>();
        var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var loop = Task.Run(async () =>
        {
            // Bounded by the stop token and by count: 2 minutes of samples at most.
            for (var i = 0; i < 480 && !stop.IsCancellationRequested; i++)
            {
                var path = await lab.PathAsync();
                lock (kinds)
                {
                    kinds.Add(path?.Kind ?? "missing");
                }
                await Task.Delay(250, stop.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
        }, CancellationToken.None);
        return (kinds, (stop, loop));
    }

    private static async Task<List<string>> StopSamplingAsync(List<string> kinds, (CancellationTokenSource Stop, Task Loop) sampling)
    {
        await sampling.Stop.CancelAsync();
        await sampling.Loop.WaitAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        sampling.Stop.Dispose();
        lock (kinds)
        {
            return [.. kinds];
        }
    }

    /// <summary>Runs of equal kinds, e.g. "direct×12 → relayed×9 → direct×20".</summary>
    private static string Summarize(List<string> samples)
    {
        var runs = new List<(string Kind, int Count)>();
        foreach (var kind in samples)
        {
            if (runs.Count > 0 && runs[^1].Kind == kind)
            {
                runs[^1] = (kind, runs[^1].Count + 1);
            }
            else
            {
                runs.Add((kind, 1));
            }
        }
        return runs.Count == 0 ? "none" : string.Join(" → ", runs.Select(r => $"{r.Kind}×{r.Count}"));
    }

    /// <summary>Ends the stream: every byte back intact, and the echo service accepted only the flows the test opened (none reopened).</summary>
    private static async Task FinishAsync(DirectPathLab lab, ContinuousTransfer transfer, int flows)
    {
        await transfer.CompleteAsync(Drain, lab.Diagnostics);
        Assert.True(lab.Echo.Carried == flows + (lab.SecondClient is null ? 0 : 1),
            $"the echo service must have carried exactly the flows opened ({flows} by the client{(lab.SecondClient is null ? "" : ", 1 by the second client")}), none reopened; {lab.Echo.Carried} carried bytes{lab.Diagnostics()}");
        var (direct, relayed) = await lab.MeterAsync();
        Report($"{lab.Name}: {transfer}; the connector host counted {direct} B of UDP (direct) and {relayed} B on relay links; path at the end: {DirectPathLab.Describe(await lab.PathAsync())}");
    }

    private static void Report(string line)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        TestContext.Current.SendDiagnosticMessage(line);
    }
}
