using Ferry.Core.ControlPlane;
using Ferry.NetworkTests.Infrastructure;

namespace Ferry.NetworkTests;

/// <summary>
/// Issue 6, NAT traversal: per NAT topology, whether the client's QUIC connection to the connector leaves the relay for
/// a direct UDP path (and to which address), falls back to the relay when the direct path dies and returns when it comes
/// back, and survives the client changing address, all while one TCP stream through the client's port forward keeps
/// flowing and comes back byte for byte on the same connection.
/// </summary>
public sealed class DirectPathTests
{
    private static readonly TimeSpan ToDirect = TimeSpan.FromSeconds(30);
    // Long enough for a search over every candidate pair to give up.
    private static readonly TimeSpan SearchEnds = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan BackToRelay = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan BackToDirect = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan DirectAfterMove = TimeSpan.FromSeconds(45);
    private static readonly TimeSpan Drain = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Behind_two_endpoint_independent_nats_the_path_goes_direct_to_the_connector_nats_public_address()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat);
        var transfer = await StartAsync(lab, p => p.DirectPossible, "two endpoint-independent NATs must let plain UDP sockets reach each other");

        var path = await lab.WaitForPathAsync("direct", ToDirect, transfer, "both NATs map endpoint-independently");
        Assert.True(DirectPathLab.RemoteHost(path) == DirectPathLab.ConnectorWan,
            $"the direct path must go to the connector NAT's public address {DirectPathLab.ConnectorWan}; it goes to {path.Remote}{lab.Diagnostics()}");
        await lab.RequireCarriedByAsync("direct", transfer, "on the direct path");
        RequireLogged(lab, ": direct ");

        await FinishAsync(lab, transfer);
        lab.RecordTimeToDirect("both-behind-eim-nat", path);
    }

    [Fact]
    public async Task A_client_behind_a_symmetric_nat_goes_direct_to_a_connector_with_a_public_address()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.SymmetricClientPublicConnector);
        var transfer = await StartAsync(lab, p => p.DirectPossible, "a public host must be able to answer a client behind a symmetric NAT where its packets come from");

        // The client's NAT maps each destination apart, so the connector can only learn it as a peer-reflexive candidate.
        var path = await lab.WaitForPathAsync("direct", ToDirect, transfer, "the connector is public and answers the client where its checks come from");
        var expected = $"{DirectPathLab.ConnectorWan}:{lab.ConnectorUdpPort}";
        Assert.True(path.Remote == expected, $"the direct path must go to the connector's public data-plane address {expected}; it goes to {path.Remote}{lab.Diagnostics()}");
        await lab.RequireCarriedByAsync("direct", transfer, "on the direct path");
        RequireLogged(lab, ": direct ");

        await FinishAsync(lab, transfer);
        lab.RecordTimeToDirect("symmetric-client-public-connector", path);
    }

    [Fact]
    public async Task Behind_two_symmetric_nats_the_path_stays_relayed_and_says_why()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothSymmetric);
        var transfer = await StartAsync(lab, p => p.ClientMapped is not null && p.ConnectorMapped is not null && !p.ClientHeardConnector && !p.ConnectorHeardClient,
            "both hosts reach the internet over UDP, but two symmetric NATs let neither reach the other");

        var watch = await lab.WatchUntilDirectFailureAsync(SearchEnds, transfer);
        await lab.RequireCarriedByAsync("relayed", transfer, "after the direct search");
        await FinishAsync(lab, transfer);
        RequireStayedRelayed(lab, watch, SearchEnds);
    }

    [Fact]
    public async Task With_udp_blocked_for_the_client_the_path_stays_relayed_over_tcp_and_says_why()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat, new DirectPathLabOptions { BlockClientUdp = true });
        var transfer = await StartAsync(lab, p => p.ClientMapped is null && p.ConnectorMapped is not null && !p.ClientHeardConnector && !p.ConnectorHeardClient,
            "no UDP leaves or reaches the client's site, while the connector's does");

        var watch = await lab.WatchUntilDirectFailureAsync(SearchEnds, transfer);
        await lab.RequireCarriedByAsync("relayed", transfer, "with UDP blocked");
        await FinishAsync(lab, transfer);
        RequireStayedRelayed(lab, watch, SearchEnds);
    }

    [Fact]
    public async Task On_one_private_segment_the_path_goes_direct_to_the_connectors_private_address()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.SameSegment);
        var transfer = await StartAsync(lab, p => p.DirectPossible, "two hosts on one segment must reach each other over UDP");

        var path = await lab.WaitForPathAsync("direct", ToDirect, transfer, "client and connector share a segment");
        var expected = $"{lab.ConnectorHostAddress}:{lab.ConnectorUdpPort}";
        Assert.True(path.Remote == expected,
            $"on one segment the direct path must go to the connector's private host address {expected}, not through the NAT; it goes to {path.Remote}{lab.Diagnostics()}");
        await lab.RequireCarriedByAsync("direct", transfer, "on the direct path");
        RequireLogged(lab, ": direct ");

        await FinishAsync(lab, transfer);
        lab.RecordTimeToDirect("same-segment", path);
    }

    [Fact]
    public async Task A_direct_path_that_dies_falls_back_to_the_slow_relay_and_comes_back_without_breaking_the_stream()
    {
        NetworkLab.RequireAvailable();
        // 40 ms on each pass over the relay's link: a relayed round trip crosses it four times, so it is 160 ms slower than direct.
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat, new DirectPathLabOptions { RelayLinkDelay = TimeSpan.FromMilliseconds(40) });
        var transfer = await StartAsync(lab, p => p.DirectPossible, "two endpoint-independent NATs must let plain UDP sockets reach each other");

        var direct = await lab.WaitForPathAsync("direct", ToDirect, transfer, "the relay is 160 ms slower than the direct path");
        Assert.True(DirectPathLab.RemoteHost(direct) == DirectPathLab.ConnectorWan, $"the direct path must go to {DirectPathLab.ConnectorWan}; it goes to {direct.Remote}{lab.Diagnostics()}");
        Assert.True(direct.DirectRttMs is null || direct.RelayedRttMs is null || direct.RelayedRttMs > direct.DirectRttMs,
            $"with 160 ms more on the relay, the relayed round trip ({direct.RelayedRttMs} ms) must be measured longer than the direct one ({direct.DirectRttMs} ms){lab.Diagnostics()}");
        await lab.RequireCarriedByAsync("direct", transfer, "on the direct path");
        RequireLogged(lab, ": direct ");

        // The public router drops UDP between the two sites; the relay stays reachable over TCP.
        await lab.CutDirectAsync();
        var relayed = await lab.WaitForPathAsync("relayed", BackToRelay, transfer, "the direct path was cut");
        Assert.True(relayed.Migrations > direct.Migrations,
            $"moving back to the relay must count as a migration (was {direct.Migrations}, now {relayed.Migrations}){lab.Diagnostics()}");
        RequireLogged(lab, ": relayed (");
        await lab.RequireCarriedByAsync("relayed", transfer, "after the direct path was cut");

        await lab.RestoreDirectAsync();
        var again = await lab.WaitForPathAsync("direct", BackToDirect, transfer, "the direct path works again");
        Assert.True(again.Migrations > relayed.Migrations,
            $"moving to the direct path again must count as a migration (was {relayed.Migrations}, now {again.Migrations}){lab.Diagnostics()}");
        await lab.RequireCarriedByAsync("direct", transfer, "after the direct path came back");

        await FinishAsync(lab, transfer);
        lab.RecordTimeToDirect("both-behind-eim-nat-slow-relay", direct);
    }

    [Fact]
    public async Task After_the_client_changes_address_the_stream_survives_and_the_path_goes_direct_again()
    {
        NetworkLab.RequireAvailable();
        await using var lab = await DirectPathLab.BuildAsync(DirectPathTopology.BothBehindNat);
        var transfer = await StartAsync(lab, p => p.DirectPossible, "two endpoint-independent NATs must let plain UDP sockets reach each other");
        var first = await lab.WaitForPathAsync("direct", ToDirect, transfer, "both NATs map endpoint-independently");

        // Mid-transfer the client host moves to a new address: its NAT mapping, and its relay link's source address, are gone.
        await lab.MoveClientAsync();
        await transfer.WaitForProgressAsync(512 * 1024, DirectAfterMove, $"after the client moved from {DirectPathLab.ClientHostAddress} to {DirectPathLab.ClientMovedAddress}", lab.Diagnostics);

        // The status may still say direct from before the move; only a direct path that carries the stream again counts.
        var deadline = DateTime.UtcNow + DirectAfterMove;
        PathStatus again;
        while (true)
        {
            again = await lab.WaitForPathAsync("direct", deadline - DateTime.UtcNow, transfer, "the client moved and must search again");
            try
            {
                await lab.RequireCarriedByAsync("direct", transfer, "after the client moved");
                break;
            }
            catch (Xunit.Sdk.XunitException) when (DateTime.UtcNow < deadline && transfer.Fault is null)
            {
                // Mid-switch (relay and direct both carried part of the window): judge the next window.
            }
        }
        Assert.True(DirectPathLab.RemoteHost(again) == DirectPathLab.ConnectorWan, $"after the move the direct path must still go to {DirectPathLab.ConnectorWan}; it goes to {again.Remote}{lab.Diagnostics()}");

        await FinishAsync(lab, transfer);
        lab.RecordTimeToDirect("both-behind-eim-nat-client-moved", first);
    }

    /// <summary>Checks the topology's premise with plain UDP sockets (so a failure later points at Ferry), then starts Ferry and the stream.</summary>
    private static async Task<ContinuousTransfer> StartAsync(DirectPathLab lab, Func<UdpProbeResult, bool> premise, string premiseText)
    {
        var probe = await lab.ProbeDirectUdpAsync();
        Assert.True(premise(probe), $"premise: {premiseText}; {probe}");
        await lab.StartFerryAsync();
        return await lab.StartTransferAsync();
    }

    /// <summary>Ends the stream: every byte back intact, over the one TCP connection the echo service ever accepted.</summary>
    private static async Task FinishAsync(DirectPathLab lab, ContinuousTransfer transfer)
    {
        await transfer.CompleteAsync(Drain, lab.Diagnostics);
        Assert.True(lab.Echo.Carried == 1, $"exactly one connection must have carried bytes to the echo service (the stream never reopened); {lab.Echo.Carried} did{lab.Diagnostics()}");
        Report($"{lab.Name}: {transfer}; path at the end: {DirectPathLab.Describe(await lab.PathAsync())}");
    }

    private static void Report(string line)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        TestContext.Current.SendDiagnosticMessage(line);
    }

    private static void RequireStayedRelayed(DirectPathLab lab, PathWatch watch, TimeSpan bound)
    {
        Report($"{lab.Name}: after {watch.Elapsed.TotalSeconds:0.0} s ({watch.Polls} polls) the path is {DirectPathLab.Describe(watch.Last)}");
        Assert.True(!watch.SawDirect, $"no direct path is possible here, yet the status showed one during the search{lab.Diagnostics()}");
        Assert.True(watch.Last is { Kind: "relayed" } && !string.IsNullOrWhiteSpace(watch.Last.DirectFailure),
            $"expected the path to be 'relayed' with a non-empty directFailure within {bound.TotalSeconds:0} s; after {watch.Polls} polls over {watch.Elapsed.TotalSeconds:0} s it is {DirectPathLab.Describe(watch.Last)}{lab.Diagnostics()}");
    }

    private static void RequireLogged(DirectPathLab lab, string what)
    {
        var lines = lab.ClientPathLines();
        Assert.True(lines.Any(l => l.Contains($"connector/{lab.ConnectorId}{what}", StringComparison.Ordinal)),
            $"the client must log 'Path to connector/{lab.ConnectorId}{what}…'; its path lines: [{string.Join(" | ", lines)}]{lab.Diagnostics()}");
    }
}
