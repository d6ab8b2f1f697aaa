using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Paths.Ice;
using Ferry.Stun;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.UnitTests.Paths;

/// <summary>
/// Connectivity checks between a controlling agent (client) and a controlled one (connector) over an in-memory network that
/// can put either behind a NAT: what answers, what is learned, and what is refused.
/// </summary>
public sealed class IceAgentTests
{
    private static readonly IPEndPoint ClientHost = IPEndPoint.Parse("10.1.0.2:4000");
    private static readonly IPEndPoint ConnectorHost = IPEndPoint.Parse("10.2.0.2:5000");
    private const string ClientId = "device/dv_1";
    private const string ConnectorId = "connector/cn_1";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task An_address_first_seen_in_a_check_takes_the_kind_its_owner_signals_later()
    {
        await using var net = new FakeNetwork { HoldAnswerUntilConnectorChecked = true };
        var session = net.Client.Start(ConnectorId);
        await WaitUntilAsync(() => session.Snapshot() is { HasRemote: true } s && s.Targets.Any(t => t.Alive && t.Candidate.EndPoint.Equals(ConnectorHost)),
            () => $"{session.Snapshot()}; {net}");
        // Learned as peer-reflexive from the check that came first; the answer then says it is the connector's host address.
        Assert.Equal(CandidateKind.Host, session.Snapshot().Targets.Single(t => t.Candidate.EndPoint.Equals(ConnectorHost)).Candidate.Kind);
        Assert.True(net.Delivered.TakeWhile(d => !(d.From.Equals(ClientHost) && d.To.Equals(ConnectorHost))).Any(d => d.From.Equals(ConnectorHost) && d.IsRequest),
            "the connector's check must have reached the client before the client checked the connector: " + net);
    }

    [Fact]
    public async Task Both_ends_check_each_other_and_the_client_measures_the_direct_and_relayed_round_trips()
    {
        await using var net = new FakeNetwork();
        var session = net.Client.Start(ConnectorId);
        await WaitUntilAsync(() => session.Snapshot() is { HasRemote: true, RelayAlive: true } s && s.Targets.Any(t => t.Alive && t.Candidate.EndPoint.Equals(ConnectorHost)),
            () => $"{session.Snapshot()}; {net}");
        var target = session.Snapshot().Targets.Single(t => t.Candidate.EndPoint.Equals(ConnectorHost));
        Assert.Equal(CandidateKind.Host, target.Candidate.Kind);
        Assert.NotNull(target.SrttMs);
        Assert.NotNull(session.Snapshot().RelaySrttMs);
        // The connector checked back towards the client's offered address too: that is what opens its NAT.
        Assert.Contains(net.Delivered, d => d.From.Equals(ConnectorHost) && d.To.Equals(ClientHost) && d.IsRequest);
        Assert.Equal(1, net.Connector.SessionCount);
    }

    [Fact]
    public async Task A_check_from_an_address_nobody_signaled_becomes_a_peer_reflexive_candidate_that_works()
    {
        // The client sits behind a NAT that maps per destination: none of its offered addresses can be reached, but its
        // check to the connector arrives from a fresh mapping, which the connector learns and checks back.
        var mapped = IPEndPoint.Parse("198.51.100.9:61000");
        await using var net = new FakeNetwork { ClientNat = mapped };
        var session = net.Client.Start(ConnectorId);
        await WaitUntilAsync(() => session.Snapshot().Targets.Any(t => t.Alive), () => net.ToString());
        await WaitUntilAsync(() => net.Delivered.Any(d => d.From.Equals(ConnectorHost) && d.To.Equals(mapped) && !d.IsRequest) &&
                                   net.Delivered.Any(d => d.From.Equals(ConnectorHost) && d.To.Equals(mapped) && d.IsRequest),
            () => $"the connector must answer and check back the client's mapped address {mapped}; {net}");
    }

    [Fact]
    public async Task Checks_signed_with_the_wrong_password_or_over_another_peers_relay_get_no_answer()
    {
        await using var net = new FakeNetwork();
        var session = net.Client.Start(ConnectorId);
        await WaitUntilAsync(() => session.Snapshot().HasRemote, () => net.ToString());
        var connectorUfrag = net.ConnectorAnswer!.Ufrag;

        var forged = Request($"{connectorUfrag}:{session.Local.Ufrag}", StunCredentials.ShortTermKey("not-the-password-of-the-connector"));
        var attacker = IPEndPoint.Parse("203.0.113.66:7777");
        var sentBefore = net.SentBy(ConnectorHost).Count;
        Assert.True(net.Connector.TryHandleStun(forged, attacker, relayPeer: null), "a STUN binding request is consumed, answered or not");
        Assert.DoesNotContain(net.SentBy(ConnectorHost).Skip(sentBefore), d => d.To.Equals(attacker));

        // Right password, but over a relay from a device that is not the session's peer: the relay's word is not enough.
        var genuine = Request($"{connectorUfrag}:{session.Local.Ufrag}", StunCredentials.ShortTermKey(net.ConnectorAnswer.Password));
        var relayedBefore = net.RelayedBy(ConnectorHost).Count;
        Assert.True(net.Connector.TryHandleStun(genuine, null, relayPeer: "device/dv_other"));
        Assert.Equal(relayedBefore, net.RelayedBy(ConnectorHost).Count);
        // The same request from the session's own peer is answered over the relay.
        Assert.True(net.Connector.TryHandleStun(genuine, null, relayPeer: ClientId));
        await WaitUntilAsync(() => net.RelayedBy(ConnectorHost).Count > relayedBefore, () => net.ToString());
    }

    [Fact]
    public async Task Malformed_signaling_is_ignored_and_not_stun_is_left_to_quic()
    {
        await using var net = new FakeNetwork();
        var answers = 0;
        await net.Connector.HandleSignalAsync(new CandidatesMessage(ClientId, "u", "short", []), (_, _) => { answers++; return Task.CompletedTask; }, Ct);
        Assert.Equal(0, answers);
        Assert.Equal(0, net.Connector.SessionCount);
        Assert.False(Candidate.TryParse(new CandidateInfo("host", "not an address", 1), out _));
        Assert.False(Candidate.TryParse(new CandidateInfo("relay", "10.0.0.1:1", 1), out _));
        Assert.False(Candidate.TryParse(new CandidateInfo("host", "10.0.0.1:0", 1), out _));
        Assert.True(Candidate.TryParse(new CandidateInfo("srflx", "198.51.100.1:3478", 7), out var good));
        Assert.Equal(CandidateKind.ServerReflexive, good!.Kind);
        // A QUIC short-header packet is not STUN.
        Assert.False(net.Connector.TryHandleStun([0x41, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], ClientHost, null));
    }

    [Fact]
    public void Priorities_rank_host_over_peer_reflexive_over_server_reflexive()
    {
        Assert.True(Candidate.PriorityOf(CandidateKind.Host, 0) > Candidate.PriorityOf(CandidateKind.PeerReflexive, 65535));
        Assert.True(Candidate.PriorityOf(CandidateKind.PeerReflexive, 0) > Candidate.PriorityOf(CandidateKind.ServerReflexive, 65535));
        // RFC 8445 §5.1.2.1 for a host candidate of local preference 65535, component 1.
        Assert.Equal(2130706431u, Candidate.PriorityOf(CandidateKind.Host, 65535));
    }

    private static byte[] Request(string username, byte[] key)
    {
        var buffer = new byte[160];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, StunTransactionId.NewRandom());
        writer.AddUsername(username);
        writer.AddPriority(1);
        writer.AddIceControlling(1);
        writer.AddMessageIntegrity(key);
        writer.AddFingerprint();
        return buffer[..writer.Length];
    }

    private static async Task WaitUntilAsync(Func<bool> condition, Func<string> diagnostics)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not met within 10 s: " + diagnostics());
            await Task.Delay(20, Ct);
        }
    }

    /// <summary>
    /// Two agents joined by an in-memory network and a relay. With <see cref="ClientNat"/> set, the client's datagrams leave
    /// from that address and only answers to it come back (a NAT that maps per destination filters everything else).
    /// </summary>
    private sealed class FakeNetwork : IAsyncDisposable
    {
        private readonly Lock _lock = new();
        private readonly List<Datagram> _delivered = [];

        public FakeNetwork()
        {
            Client = new IceAgent(true, (p, to, _) => Udp(ClientHost, p, to), (peer, p, _) => Relayed(ClientId, peer, p),
                _ => Task.FromResult<IReadOnlyList<Candidate>>([new Candidate(CandidateKind.Host, ClientHost, Candidate.PriorityOf(CandidateKind.Host, 65535))]),
                NullLogger.Instance);
            Connector = new IceAgent(false, (p, to, _) => Udp(ConnectorHost, p, to), (peer, p, _) => Relayed(ConnectorId, peer, p),
                _ => Task.FromResult<IReadOnlyList<Candidate>>([new Candidate(CandidateKind.Host, ConnectorHost, Candidate.PriorityOf(CandidateKind.Host, 65535))]),
                NullLogger.Instance);
            // Signaling: what the controller would forward, with the sender named as the peer.
            Client.Signal = (offer, ct) => Connector.HandleSignalAsync(offer with { Peer = ClientId }, async (answer, _) =>
            {
                ConnectorAnswer = answer;
                if (HoldAnswerUntilConnectorChecked)
                {
                    // The controller is slow: the connector's first check reaches the client before its answer does.
                    var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
                    while (!Delivered.Any(d => d.From.Equals(ConnectorHost) && d.To.Equals(ClientHost) && d.IsRequest) && DateTime.UtcNow < deadline)
                    {
                        await Task.Delay(10, ct);
                    }
                }
                await Client.HandleSignalAsync(answer with { Peer = ConnectorId }, (_, _) => Task.CompletedTask, ct);
            }, ct);
        }

        /// <summary>Deliver the connector's answer only after its first check has reached the client.</summary>
        public bool HoldAnswerUntilConnectorChecked { get; init; }

        public IPEndPoint? ClientNat { get; init; }

        public IceAgent Client { get; }

        public IceAgent Connector { get; }

        public CandidatesMessage? ConnectorAnswer { get; private set; }

        public IReadOnlyList<Datagram> Delivered
        {
            get
            {
                lock (_lock)
                {
                    return [.. _delivered];
                }
            }
        }

        public List<Datagram> SentBy(IPEndPoint from) => [.. Delivered.Where(d => d.From.Equals(from))];

        public List<Datagram> RelayedBy(IPEndPoint from) => [.. Delivered.Where(d => d.From.Equals(from) && d.To.Address.Equals(IPAddress.None))];

        private ValueTask Udp(IPEndPoint from, ReadOnlyMemory<byte> packet, IPEndPoint to)
        {
            var source = from.Equals(ClientHost) && ClientNat is { } nat ? nat : from;
            var isRequest = (packet.Span[0] & 0x01) == 0 && (packet.Span[1] & 0x10) == 0;
            lock (_lock)
            {
                _delivered.Add(new Datagram(source, to, isRequest));
            }
            if (to.Equals(ConnectorHost))
            {
                Connector.TryHandleStun(packet.Span, source, null);
            }
            else if (to.Equals(ClientHost) && ClientNat is null || ClientNat is { } mapped && to.Equals(mapped))
            {
                Client.TryHandleStun(packet.Span, from, null);
            }
            return ValueTask.CompletedTask;
        }

        private ValueTask Relayed(string fromPeer, string toPeer, ReadOnlyMemory<byte> packet)
        {
            var fromHost = fromPeer == ClientId ? ClientHost : ConnectorHost;
            lock (_lock)
            {
                _delivered.Add(new Datagram(fromHost, new IPEndPoint(IPAddress.None, 0), false));
            }
            var target = toPeer == ConnectorId ? Connector : toPeer == ClientId ? Client : null;
            target?.TryHandleStun(packet.Span, null, fromPeer);
            return ValueTask.CompletedTask;
        }

        public override string ToString() => $"{Delivered.Count} datagrams: " + string.Join(", ", Delivered.TakeLast(12).Select(d => $"{d.From}->{d.To}{(d.IsRequest ? " req" : " resp")}"));

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync();
            await Connector.DisposeAsync();
        }
    }

    private sealed record Datagram(IPEndPoint From, IPEndPoint To, bool IsRequest);
}
