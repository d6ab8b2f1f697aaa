using System.Net;
using System.Security.Cryptography;
using System.Text;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.Relay;
using Ferry.Stun;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// Writes the binary seed corpora from the real encoders, so the committed seeds match the wire format. Run it after a wire
/// change: FERRY_FUZZ_WRITE_CORPUS=$PWD/tests/Ferry.UnitTests/Corpus dotnet test tests/Ferry.UnitTests --no-build --filter "FullyQualifiedName~CorpusWriter" -- xUnit.Explicit=on.
/// The text corpora (SOCKS5, HTTP CONNECT, admin API bodies) are written by hand.
/// </summary>
public sealed class CorpusWriter
{
    /// <summary>The MESSAGE-INTEGRITY password of the STUN seeds; the ICE fuzz test verifies with it.</summary>
    internal const string StunPassword = "corpusCorpusCorpus0123456789";

    // Explicit: a tool to run on demand (it rewrites committed files), not a check; the fuzz tests read what it wrote.
    [Fact(Explicit = true)]
    public void WriteCorpora()
    {
        var root = Environment.GetEnvironmentVariable("FERRY_FUZZ_WRITE_CORPUS");
        Assert.False(string.IsNullOrEmpty(root), "set FERRY_FUZZ_WRITE_CORPUS to the Corpus folder to regenerate the binary seeds");
        void Write(string parser, string name, ReadOnlySpan<byte> bytes)
        {
            Directory.CreateDirectory(Path.Combine(root!, parser));
            File.WriteAllBytes(Path.Combine(root!, parser, name), bytes.ToArray());
        }

        var key = StunCredentials.ShortTermKey(StunPassword);
        var id = new StunTransactionId(0x0102030405060708, 0x090A0B0C);
        Write("stun-ice", "check-controlling.bin", Stun(StunMessageType.BindingRequest, id, (ref StunMessageWriter w) =>
        {
            w.AddUsername("abcd1234:wxyz5678");
            w.AddPriority(Candidate(126));
            w.AddIceControlling(0x1122334455667788);
            w.AddUseCandidate();
            w.AddMessageIntegrity(key);
            w.AddFingerprint();
        }));
        Write("stun-ice", "check-controlled.bin", Stun(StunMessageType.BindingRequest, id, (ref StunMessageWriter w) =>
        {
            w.AddUsername("wxyz5678:abcd1234");
            w.AddPriority(Candidate(110));
            w.AddIceControlled(42);
            w.AddMessageIntegrity(key);
            w.AddFingerprint();
        }));
        Write("stun-ice", "success-v4.bin", Stun(StunMessageType.BindingSuccess, id, (ref StunMessageWriter w) =>
        {
            w.AddXorMappedAddress(IPEndPoint.Parse("198.51.100.7:61000"));
            w.AddMessageIntegrity(key);
            w.AddFingerprint();
        }));
        Write("stun-ice", "success-v6.bin", Stun(StunMessageType.BindingSuccess, id, (ref StunMessageWriter w) =>
        {
            w.AddXorMappedAddress(IPEndPoint.Parse("[2001:db8::7]:61000"));
            w.AddMessageIntegrity(key);
            w.AddFingerprint();
        }));
        Write("stun-ice", "role-conflict.bin", Stun(StunMessageType.BindingError, id, (ref StunMessageWriter w) =>
        {
            w.AddErrorCode(487, "Role Conflict");
            w.AddMessageIntegrity(key);
            w.AddFingerprint();
        }));
        Write("stun-ice", "sha256.bin", Stun(StunMessageType.BindingRequest, id, (ref StunMessageWriter w) =>
        {
            w.AddUsername("abcd1234:wxyz5678");
            w.AddSoftware("ferry");
            w.AddMessageIntegritySha256(key, 16);
            w.AddFingerprint();
        }));

        var notAfter = DateTimeOffset.FromUnixTimeSeconds(1_900_000_000);
        Write("relay-frame", "bind.bin", Frame(f => RelayFrameCodec.WriteBind(f, 1, "AQIDBAUGBwgJ"), RelayFrameCodec.BindLength("AQIDBAUGBwgJ")));
        Write("relay-frame", "bind-ok.bin", Frame(f => RelayFrameCodec.WriteBindOk(f, 1, 7, present: true, notAfter, "device/dv_1"), RelayFrameCodec.BindOkLength("device/dv_1")));
        Write("relay-frame", "bind-refused.bin", Frame(f => RelayFrameCodec.WriteBindRefused(f, 2, RelayRefusal.TicketExpired, "too late"), RelayFrameCodec.BindRefusedLength("too late")));
        Write("relay-frame", "data.bin", Frame(f => RelayFrameCodec.WriteData(f, 7, "0123456789abcdef"u8), RelayFrameCodec.DataLength(16)));
        Write("relay-frame", "ping.bin", Frame(f => RelayFrameCodec.WritePing(f, RelayFrameType.Ping, 5), RelayFrameCodec.PingLength));
        Write("relay-frame", "pong.bin", Frame(f => RelayFrameCodec.WritePing(f, RelayFrameType.Pong, 5), RelayFrameCodec.PingLength));
        Write("relay-frame", "error.bin", Frame(f => RelayFrameCodec.WriteError(f, RelayRefusal.ProtocolError, "bad"), RelayFrameCodec.ErrorLength("bad")));
        Write("relay-frame", "unbind.bin", Frame(f => RelayFrameCodec.WriteUnbind(f, 7), RelayFrameCodec.UnbindLength));
        Write("relay-frame", "peer-state.bin", Frame(f => RelayFrameCodec.WritePeerState(f, 7, present: false), RelayFrameCodec.PeerStateLength));

        // Signed with a throw-away key: the seeds reach the signature check and stop there, which is the hostile case.
        using var ca = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        Write("relay-ticket", "ticket-1.txt", Encoding.ASCII.GetBytes(RelayTicket.Issue(ca, "device/dv_1", "connector/cn_1", notAfter).Text));
        Write("relay-ticket", "ticket-2.txt", Encoding.ASCII.GetBytes(RelayTicket.Issue(ca, "device/dv_a0b1c2d3e4f5", "connector/cn_0123456789abcdef", notAfter).Text));

        Write("flow-header", "tcp-name.bin", new FlowHeader(FlowProtocol.Tcp, "db.internal.example", 5432).ToArray());
        Write("flow-header", "tcp-v4.bin", new FlowHeader(FlowProtocol.Tcp, "10.0.0.5", 22).ToArray());
        Write("flow-header", "udp-v6.bin", new FlowHeader(FlowProtocol.Udp, "2001:db8::53", 53).ToArray());
        Write("flow-header", "udp-name.bin", new FlowHeader(FlowProtocol.Udp, "dns.example.", 53).ToArray());
        Write("flow-reply", "ok.bin", new FlowReply(FlowStatus.Ok, "").ToArray());
        Write("flow-reply", "denied.bin", new FlowReply(FlowStatus.Denied, "device/dv_1 is not granted resource 'db'").ToArray());
        Write("flow-reply", "unicode.bin", new FlowReply(FlowStatus.NameNotFound, "résolution échouée ✗").ToArray());
        var record = new byte[64];
        Write("udp-record", "payload.bin", record.AsSpan(0, UdpFlowFraming.EncodeRecord(record, "hello"u8)));
        Write("udp-record", "empty.bin", record.AsSpan(0, UdpFlowFraming.EncodeRecord(record, [])));
        var close = new byte[UdpFlowFraming.RecordPrefixLength + FlowReply.MaxEncodedLength];
        Write("udp-record", "close.bin", close.AsSpan(0, UdpFlowFraming.EncodeClose(close, new FlowReply(FlowStatus.Timeout, "idle for 60 s"))));
        var datagram = new byte[32];
        Write("udp-datagram", "short-id.bin", datagram.AsSpan(0, UdpFlowFraming.EncodeDatagram(datagram, 1, "ping"u8)));
        Write("udp-datagram", "long-id.bin", datagram.AsSpan(0, UdpFlowFraming.EncodeDatagram(datagram, 1L << 40, "ping"u8)));
        Write("udp-datagram", "two-byte-id.bin", datagram.AsSpan(0, UdpFlowFraming.EncodeDatagram(datagram, 300, [])));

        var i = 0;
        foreach (var message in SessionMessageSamples())
        {
            Write("session-message", $"{i++:00}-{message.GetType().Name}.json", Encoding.UTF8.GetBytes(SessionMessage.Serialize(message)));
        }
    }

    /// <summary>One message of every type, with every field set, so mutations reach every member.</summary>
    internal static SessionMessage[] SessionMessageSamples()
    {
        var at = DateTimeOffset.FromUnixTimeSeconds(1_900_000_000);
        var grant = new ResourceGrant("rs_1", "db", "nw_1", "db.internal", "5432", "none");
        return
        [
            new ProbeMessage(1, 1_800_000_000_000, 10_000),
            new HelloMessage("host-1", ["10.0.0.2", "fd00::2"], "0.1.0", 1, 1_800_000_000_000, 1_800_000_000_005, "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"),
            new ProbeReplyMessage(1, 1_800_000_000_000, 1_800_000_000_005),
            new WelcomeMessage("ss_1", "connector/cn_1", 10_000, -3),
            new RefusedMessage("token-expired", "sign in again"),
            new CertificateRequestMessage("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"),
            new CertificateIssuedMessage("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n", at),
            new RotateTokensMessage(),
            new TokensRotatedMessage("fa_access", at, "fr_refresh"),
            new TokensSavedMessage("fa_access"),
            new ResourcesMessage([grant], [new NetworkConnectors("nw_1", [new ConnectorRoute("connector/cn_1", "edge-1", "eu-west", 3)])]),
            new ErrorMessage("not-granted", "no policy lets these two talk", "connector/cn_1"),
            new RelayStatusMessage(["203.0.113.1:443"], ["203.0.113.1:3478"], 4, 100, 200, 3, 4, 1.5, 0),
            new RelaysMessage([new RelayInfo("rl_1", "relay-1", "eu-west", ["203.0.113.1:443"], ["203.0.113.1:3478"])]),
            new StunReportMessage("ok", "198.51.100.7:61000", ["relay-1"], null),
            new TicketRequestMessage("connector/cn_1"),
            new TicketIssuedMessage("connector/cn_1", "AQIDBAUGBwgJ", at),
            new AccessMessage([grant], [new OwnerGrants("user/us_1", ["rs_1"])], ["device/dv_gone"], new NetworkSettings("nw_1", "10.0.0.53", false)),
            new CandidatesMessage("connector/cn_1", "abcd1234", "abcdefghijklmnopqrstuvwx", [new CandidateInfo("host", "10.0.0.2:4000", 2130706431), new CandidateInfo("srflx", "[2001:db8::7]:61000", 1694498815)], Answer: true),
            new PathReportMessage([new PathStatus("connector/cn_1", "direct", "10.0.0.2:4000", "10.1.0.2:5000", 1.5, 1.4, 9.5, 1000, 2000, null, 350, 1)]),
            new ConnectorStatusMessage(3, 7, [new ResourceCheck("rs_1", "ok"), new ResourceCheck("rs_2", "unresolvable", "NXDOMAIN")]),
        ];
    }

    private static uint Candidate(int type) => ((uint)type << 24) | (65535u << 8) | 255;

    private delegate void StunBuild(ref StunMessageWriter writer);

    private static byte[] Stun(StunMessageType type, StunTransactionId id, StunBuild build)
    {
        var buffer = new byte[512];
        var writer = new StunMessageWriter(buffer, type, id);
        build(ref writer);
        return buffer[..writer.Length];
    }

    private static byte[] Frame(Func<byte[], int> write, int length)
    {
        var frame = new byte[length];
        write(frame);
        return frame;
    }
}
