using System.Net;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issues 10 and 11 at test-suite scale (real controller, relay, connector and client processes on loopback): many flows at
/// once through one connector with every byte checked and no descriptor left behind, and a busy connector that answers late
/// is waited for rather than failed. The full scale (10 000 flows, 1 000 sessions, a soak) is 'Ferry.Benchmarks scale'.
/// </summary>
public sealed class LoadTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <remarks>
    /// Found at 10 000 flows: a connector starved of CPU for a second acknowledged nothing, and the client failed flows it
    /// could only have sent to that same connector. The freeze (SIGSTOP) is longer than the client's silence rule (1 s plus
    /// three round trips, once the RTT has settled) and shorter than the controller's offline rule (three missed heartbeats of 1 s).
    /// </remarks>
    [Fact]
    public async Task A_flow_opened_while_the_only_connector_stalls_waits_for_it_instead_of_failing()
    {
        await using var lab = await ClusterLab.StartAsync(Ct);
        var connector = await lab.AddConnectorAsync("c1");
        var client = await lab.AddClientAsync();
        await client.EchoAsync(Ct);
        // Round trips settle the RTT estimate; fresh, its variance alone would stretch the silence rule past the freeze.
        await using (var settle = await LongFlow.OpenAsync(client.Forwards[0], Ct))
        {
            for (var i = 0; i < 30; i++)
            {
                await settle.RoundTripAsync(Ct);
            }
        }

        connector.Send(UnixSignal.Stop);
        Task echo;
        try
        {
            echo = client.EchoAsync(Ct);
            // The stall itself is the stimulus: its length is what the rules above compare.
            await Task.Delay(TimeSpan.FromSeconds(1.6), Ct);
            Assert.False(echo.IsCompleted, $"the flow ended while the connector was frozen: {echo.Exception?.InnerException?.Message}\n{lab.Logs()}");
        }
        finally
        {
            connector.Send(UnixSignal.Continue);
        }
        await echo.WaitAsync(TimeSpan.FromSeconds(20), Ct);
        await client.EchoAsync(Ct);
        Assert.DoesNotContain("Cannot reach", client.Process.Output, StringComparison.Ordinal);
    }

    /// <remarks>
    /// Three rounds of 300 flows held open together (150 per client), each flow with its own
    /// bytes, checked in four round trips. Between rounds the connector's and clients' descriptors must return to where they
    /// were: a flow that leaks a socket or a stream shows as a count that grows round by round.
    /// </remarks>
    [Fact]
    public async Task Three_hundred_concurrent_flows_keep_every_byte_and_leave_no_descriptor_behind_round_after_round()
    {
        const int perClient = 150, rounds = 3;
        await using var lab = await ClusterLab.StartAsync(Ct);
        var connector = await lab.AddConnectorAsync("c1");
        var clients = await lab.AddClientsAsync(2);
        foreach (var c in clients)
        {
            await c.EchoAsync(Ct);
        }
        var processes = new[] { connector }.Concat(clients.Select(c => c.Process)).ToArray();
        var baseline = processes.Select(p => Descriptors(p.Id)).ToArray();

        for (var round = 0; round < rounds; round++)
        {
            using var gate = new SemaphoreSlim(50);
            var flows = await Task.WhenAll(Enumerable.Range(0, perClient * clients.Length).Select(async i =>
            {
                await gate.WaitAsync(Ct);
                try
                {
                    return await LongFlow.OpenAsync(clients[i % clients.Length].Forwards[0], Ct, seed: (round * 1000) + i);
                }
                finally
                {
                    gate.Release();
                }
            }));
            try
            {
                // Every flow is open now: the connector holds a socket to the echo service for each.
                Assert.True(Descriptors(connector.Id) >= baseline[0] + flows.Length,
                    $"round {round}: the connector holds {Descriptors(connector.Id)} descriptors with {flows.Length} flows open (baseline {baseline[0]})");
                for (var trip = 0; trip < 3; trip++)
                {
                    await Task.WhenAll(flows.Select(f => f.RoundTripAsync(Ct)));
                }
                Assert.All(flows, f => Assert.Equal(4 * 16 * 1024, f.Bytes));
            }
            finally
            {
                foreach (var f in flows)
                {
                    await f.DisposeAsync();
                }
            }

            // Closing spreads through client, relay and connector: poll, bounded, until every count is back.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            int[] now;
            while (true)
            {
                now = [.. processes.Select(p => Descriptors(p.Id))];
                if (now.Zip(baseline).All(x => x.First <= x.Second + 5) || DateTime.UtcNow > deadline)
                {
                    break;
                }
                await Task.Delay(100, Ct);
            }
            Assert.True(now.Zip(baseline).All(x => x.First <= x.Second + 5),
                $"round {round}: descriptors after closing every flow [{string.Join(", ", now)}], before any [{string.Join(", ", baseline)}] (connector, clients)\n{lab.Logs()}");
        }
    }

    private static int Descriptors(int pid) => Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Count();
}
