using System.Buffers.Binary;
using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Paths.Ice;
using Ferry.Stun;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// The connectivity-check side of STUN: the ICE attributes, MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT. Mutated inputs often get
/// their header length and fingerprint repaired, so they pass the outer checks and reach the integrity verification, which must
/// then refuse anything but the signed original.
/// </summary>
public sealed class StunIceFuzzTests
{
    private static readonly byte[] Key = StunCredentials.ShortTermKey(CorpusWriter.StunPassword);

    [Fact]
    public void Checks_parse_without_throwing_and_integrity_is_never_forged()
    {
        var seeds = Fuzzer.Corpus("stun-ice");
        var signed = seeds.Select(s => (Seed: s, Mi: CoveredPrefix(s, 0x0008), Mi256: CoveredPrefix(s, 0x001C))).ToArray();
        var verified = 0;
        var result = Fuzzer.Run("stun-ice", Fuzzer.Seed(0x1CE0001), Fuzzer.Iterations(15_000), seeds, input =>
        {
            if (!StunMessage.TryParse(input, out var message, out var error))
            {
                Assert.NotEqual(StunParseError.None, error);
                return false;
            }
            _ = message.Type;
            _ = message.TransactionId;
            message.TryGetUsername(out _);
            message.TryGetPriority(out _);
            message.TryGetIceControlled(out _);
            message.TryGetIceControlling(out _);
            _ = message.HasUseCandidate;
            message.TryGetXorMappedAddress(out _);
            message.TryGetErrorCode(out _, out _);
            if (message.VerifyMessageIntegrity(Key))
            {
                verified++;
                var prefix = CoveredPrefix(input, 0x0008);
                Assert.Contains(signed, s => s.Mi is not null && prefix is not null && s.Mi.AsSpan().SequenceEqual(prefix));
            }
            if (message.VerifyMessageIntegritySha256(Key))
            {
                var prefix = CoveredPrefix(input, 0x001C);
                Assert.Contains(signed, s => s.Mi256 is not null && prefix is not null && s.Mi256.AsSpan().SequenceEqual(prefix));
            }
            return true;
        }, NextRepaired);
        Fuzzer.Log($"{verified} inputs kept a valid MESSAGE-INTEGRITY (mutations after it, or none that touched it)");
        Assert.True(result.Accepted > result.Iterations / 20, "the repairs should let a fair share of inputs parse");
    }

    [Fact]
    public async Task The_agent_answers_only_checks_that_verify_and_keeps_answering_its_peer()
    {
        const string Peer = "device/dv_1";
        // Success responses the agent sent, by transaction id: counted as they go out, so checking costs nothing per input.
        var answers = new System.Collections.Concurrent.ConcurrentDictionary<StunTransactionId, int>();
        ValueTask Record(ReadOnlyMemory<byte> packet)
        {
            if (StunMessage.TryParse(packet.Span, out var m, out _) && m.Type.Class == StunMessageClass.SuccessResponse)
            {
                answers.AddOrUpdate(m.TransactionId, 1, (_, n) => n + 1);
            }
            return ValueTask.CompletedTask;
        }
        await using var agent = new IceAgent(false,
            (packet, _, _) => Record(packet),
            (_, packet, _) => Record(packet),
            _ => Task.FromResult<IReadOnlyList<Candidate>>([new Candidate(CandidateKind.Host, IPEndPoint.Parse("10.2.0.2:5000"), Candidate.PriorityOf(CandidateKind.Host, 65535))]),
            NullLogger.Instance);
        var mine = IceCredentials.Create();
        CandidatesMessage? answer = null;
        await agent.HandleSignalAsync(new CandidatesMessage(Peer, mine.Ufrag, mine.Password, []), (a, _) =>
        {
            answer = a;
            return Task.CompletedTask;
        }, TestContext.Current.CancellationToken);
        Assert.NotNull(answer);
        var key = StunCredentials.ShortTermKey(answer.Password);
        var username = $"{answer.Ufrag}:{mine.Ufrag}";
        var from = IPEndPoint.Parse("198.51.100.9:61000");

        byte[] Check(StunTransactionId id)
        {
            var buffer = new byte[256];
            var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, id);
            writer.AddUsername(username);
            writer.AddPriority(Candidate.PriorityOf(CandidateKind.PeerReflexive, 1));
            writer.AddIceControlling(7);
            writer.AddUseCandidate();
            writer.AddMessageIntegrity(key);
            writer.AddFingerprint();
            return buffer[..writer.Length];
        }

        int Answers(StunTransactionId id) => answers.GetValueOrDefault(id);

        var seeds = new[] { Check(StunTransactionId.NewRandom()), Check(StunTransactionId.NewRandom()) };
        var seed = Fuzzer.Seed(0x1CE0002);
        var random = new Random(seed + 1);
        var answered = 0;
        Fuzzer.Run("ice-agent", seed, Fuzzer.Iterations(10_000), seeds, input =>
        {
            var id = input.Length >= 20 ? StunTransactionId.Read(input.AsSpan(8)) : default;
            var before = input.Length >= 20 ? Answers(id) : 0;
            agent.TryHandleStun(input, random.Next(4) == 0 ? null : from, random.Next(4) == 0 ? Peer : null);
            if (input.Length < 20 || Answers(id) == before)
            {
                return false;
            }
            // Answered: the request must have been one the peer signed, unchanged where the integrity covers it.
            Assert.True(StunMessage.TryParse(input, out var message, out _) && message.VerifyMessageIntegrity(key), $"answered a check that does not verify: {Convert.ToHexString(input)}");
            var prefix = CoveredPrefix(input, 0x0008);
            Assert.Contains(seeds, s => CoveredPrefix(s, 0x0008) is { } p && prefix is not null && p.AsSpan()[20..].SequenceEqual(prefix.AsSpan()[20..]));
            answered++;
            return true;
        }, NextRepaired);
        Fuzzer.Log($"{answered} mutated checks were answered (all verified)");

        // The well-behaved peer is still answered after the storm.
        var genuine = StunTransactionId.NewRandom();
        Assert.True(agent.TryHandleStun(Check(genuine), from, null));
        Assert.Equal(1, Answers(genuine));
    }

    /// <summary>
    /// The bytes an integrity attribute of <paramref name="type"/> covers (header with the length field zeroed, the attributes
    /// before it, the MAC itself), or null when the message has none before anything malformed.
    /// </summary>
    private static byte[]? CoveredPrefix(ReadOnlySpan<byte> message, ushort type)
    {
        var offset = 20;
        while (offset + 4 <= message.Length)
        {
            var attribute = BinaryPrimitives.ReadUInt16BigEndian(message[offset..]);
            var length = BinaryPrimitives.ReadUInt16BigEndian(message[(offset + 2)..]);
            var end = offset + 4 + ((length + 3) & ~3);
            if (end > message.Length)
            {
                return null;
            }
            if (attribute == type)
            {
                var prefix = message[..end].ToArray();
                prefix[2] = prefix[3] = 0;
                return prefix;
            }
            offset = end;
        }
        return null;
    }

    /// <summary>A mutated input, half the time with its header length and fingerprint repaired so it reaches the integrity check.</summary>
    private static byte[] NextRepaired(Random random, byte[][] seeds)
    {
        var input = Fuzzer.Next(random, seeds);
        if (random.Next(2) == 0)
        {
            Repair(input);
        }
        return input;
    }

    /// <summary>Makes the header length match and, when the message ends in a FINGERPRINT, recomputes it over the mutated bytes.</summary>
    private static void Repair(byte[] input)
    {
        if (input.Length < 20 || (input.Length & 3) != 0)
        {
            return;
        }
        BinaryPrimitives.WriteUInt16BigEndian(input.AsSpan(2), (ushort)Math.Min(input.Length - 20, 0xFFFC));
        var last = input.Length - 8;
        if (last >= 20 && BinaryPrimitives.ReadUInt16BigEndian(input.AsSpan(last)) == 0x8028 && BinaryPrimitives.ReadUInt16BigEndian(input.AsSpan(last + 2)) == 4)
        {
            BinaryPrimitives.WriteUInt32BigEndian(input.AsSpan(last + 4), Crc32(input.AsSpan(0, last)) ^ 0x5354554E);
        }
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFF_FFFFu;
        foreach (var b in data)
        {
            crc ^= b;
            for (var bit = 0; bit < 8; bit++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB8_8320u : crc >> 1;
            }
        }
        return ~crc;
    }
}
