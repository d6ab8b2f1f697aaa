using System.Buffers.Binary;
using System.Net;

namespace Ferry.Stun.Tests;

public sealed class StunCodecTests
{
    private static readonly byte[] s_key = StunCredentials.ShortTermKey(Rfc5769Vectors.Password);

    [Fact]
    public void Crc32_MatchesTheStandardCheckValue()
    {
        Assert.Equal(0xCBF43926u, StunCrc32.Compute("123456789"u8));
    }

    [Fact]
    public void Rfc5769_SampleRequest_ParsesAndVerifies()
    {
        Assert.True(StunMessage.TryParse(Rfc5769Vectors.Request, out var message, out var error), error.ToString());
        Assert.Equal(StunMessageType.BindingRequest, message.Type);
        Assert.True(message.HasMagicCookie);
        Assert.Equal(StunTransactionId.Read(Rfc5769Vectors.TransactionId), message.TransactionId);
        Assert.True(message.TryGetSoftware(out var software));
        Assert.Equal(Rfc5769Vectors.ClientSoftware, software);
        Assert.True(message.TryGetUsername(out var username));
        Assert.Equal(Rfc5769Vectors.Username, username);
        Assert.True(message.TryGetPriority(out uint priority));
        Assert.Equal(Rfc5769Vectors.Priority, priority);
        Assert.True(message.TryGetIceControlled(out ulong tieBreaker));
        Assert.Equal(Rfc5769Vectors.IceControlled, tieBreaker);
        Assert.False(message.TryGetIceControlling(out _));
        Assert.False(message.HasUseCandidate);
        Assert.True(message.HasFingerprint);
        Assert.True(message.VerifyMessageIntegrity(s_key));
        Assert.False(message.VerifyMessageIntegrity("wrong password"u8));
        Assert.False(message.VerifyMessageIntegritySha256(s_key));
    }

    [Theory]
    [InlineData(false, "192.0.2.1")]
    [InlineData(true, "2001:db8:1234:5678:11:2233:4455:6677")]
    public void Rfc5769_SampleResponses_ParseAndVerify(bool ipv6, string address)
    {
        byte[] vector = ipv6 ? Rfc5769Vectors.ResponseIPv6 : Rfc5769Vectors.ResponseIPv4;
        Assert.True(StunMessage.TryParse(vector, out var message, out var error), error.ToString());
        Assert.Equal(StunMessageType.BindingSuccess, message.Type);
        Assert.True(message.TryGetXorMappedAddress(out var mapped));
        Assert.Equal(new IPEndPoint(IPAddress.Parse(address), Rfc5769Vectors.MappedPort), mapped);
        Assert.True(message.TryGetSoftware(out var software));
        Assert.Equal(Rfc5769Vectors.ServerSoftware, software);
        Assert.True(message.HasFingerprint);
        Assert.True(message.VerifyMessageIntegrity(s_key));
        Assert.False(message.VerifyMessageIntegrity("VOkJxbRl1RmTxUk/WvJxBT"u8));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Rfc5769_VectorsAreRebuiltByteForByte(int which)
    {
        var buffer = new byte[256];
        var id = StunTransactionId.Read(Rfc5769Vectors.TransactionId);
        byte[] expected;
        StunMessageWriter writer;
        if (which == 0)
        {
            expected = Rfc5769Vectors.Request;
            writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, id) { PaddingByte = 0x20 };
            writer.AddSoftware(Rfc5769Vectors.ClientSoftware);
            writer.AddPriority(Rfc5769Vectors.Priority);
            writer.AddIceControlled(Rfc5769Vectors.IceControlled);
            writer.AddUsername(Rfc5769Vectors.Username);
        }
        else
        {
            expected = which == 1 ? Rfc5769Vectors.ResponseIPv4 : Rfc5769Vectors.ResponseIPv6;
            var mapped = IPAddress.Parse(which == 1 ? "192.0.2.1" : "2001:db8:1234:5678:11:2233:4455:6677");
            writer = new StunMessageWriter(buffer, StunMessageType.BindingSuccess, id) { PaddingByte = 0x20 };
            writer.AddSoftware(Rfc5769Vectors.ServerSoftware);
            writer.AddXorMappedAddress(new IPEndPoint(mapped, Rfc5769Vectors.MappedPort));
        }

        writer.AddMessageIntegrity(s_key);
        writer.AddFingerprint();
        Assert.Equal(Convert.ToHexString(expected), Convert.ToHexString(writer.Written));
    }

    [Fact]
    public void Rfc5769_AnyFlippedBitIsCaughtByFingerprintOrIntegrity()
    {
        int caught = 0;
        for (int i = 0; i < Rfc5769Vectors.Request.Length * 8; i++)
        {
            byte[] copy = (byte[])Rfc5769Vectors.Request.Clone();
            copy[i / 8] ^= (byte)(1 << (i % 8));
            // A flip in FINGERPRINT's own type turns it into an unknown optional attribute after
            // MESSAGE-INTEGRITY, which is ignored: the message stays valid but loses its fingerprint.
            if (!StunMessage.TryParse(copy, out var message, out _) || !message.VerifyMessageIntegrity(s_key) || !message.HasFingerprint)
            {
                caught++;
            }
        }

        // Padding bytes are covered by the CRC, so no flip anywhere goes unnoticed.
        Assert.Equal(Rfc5769Vectors.Request.Length * 8, caught);
    }

    [Fact]
    public void MessageType_RoundTripsEveryMethodAndClass()
    {
        for (int method = 0; method < 0x1000; method++)
        {
            foreach (var cls in Enum.GetValues<StunMessageClass>())
            {
                var type = new StunMessageType((StunMethod)method, cls);
                ushort wire = type.ToWire();
                Assert.True(wire < 0x4000);
                Assert.Equal(type, StunMessageType.FromWire(wire));
            }
        }

        Assert.Equal(0x0001, StunMessageType.BindingRequest.ToWire());
        Assert.Equal(0x0011, StunMessageType.BindingIndication.ToWire());
        Assert.Equal(0x0101, StunMessageType.BindingSuccess.ToWire());
        Assert.Equal(0x0111, StunMessageType.BindingError.ToWire());
    }

    [Fact]
    public void EveryAttribute_RoundTrips()
    {
        var buffer = new byte[1024];
        var id = StunTransactionId.NewRandom();
        var mapped4 = new IPEndPoint(IPAddress.Parse("203.0.113.7"), 40000);
        var xor6 = new IPEndPoint(IPAddress.Parse("2001:db8::dead:beef"), 1);
        var key = StunCredentials.ShortTermKey("s3cret");
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingError, id);
        writer.AddMappedAddress(mapped4);
        writer.AddXorMappedAddress(xor6);
        writer.AddUsername("peerA:peerB");
        writer.AddSoftware("Ferry ✓");
        writer.AddErrorCode(487, "Role Conflict");
        writer.AddUnknownAttributes([0x0003, 0x7777, 0x0042]);
        writer.AddPriority(0x7effffff);
        writer.AddUseCandidate();
        writer.AddIceControlling(0x0102030405060708);
        writer.AddIceControlled(0xfffefdfcfbfaf9f8);
        writer.AddMessageIntegrity(key);
        writer.AddMessageIntegritySha256(key, 24);
        writer.AddFingerprint();
        byte[] wire = writer.Written.ToArray();

        Assert.True(StunMessage.TryParse(wire, out var message, out var error), error.ToString());
        Assert.Equal(StunMessageType.BindingError, message.Type);
        Assert.Equal(id, message.TransactionId);
        Assert.True(message.TryGetMappedAddress(out var gotMapped));
        Assert.Equal(mapped4, gotMapped);
        Assert.True(message.TryGetXorMappedAddress(out var gotXor));
        Assert.Equal(xor6, gotXor);
        Assert.True(message.TryGetUsername(out var username));
        Assert.Equal("peerA:peerB", username);
        Assert.True(message.TryGetSoftware(out var software));
        Assert.Equal("Ferry ✓", software);
        Assert.True(message.TryGetErrorCode(out int code, out var reason));
        Assert.Equal(487, code);
        Assert.Equal("Role Conflict", reason);
        Span<ushort> unknown = stackalloc ushort[8];
        Assert.Equal([0x0003, 0x7777, 0x0042], unknown[..message.GetUnknownAttributes(unknown)].ToArray());
        Assert.True(message.TryGetPriority(out uint priority));
        Assert.Equal(0x7effffffu, priority);
        Assert.True(message.HasUseCandidate);
        Assert.True(message.TryGetIceControlling(out ulong controlling));
        Assert.Equal(0x0102030405060708ul, controlling);
        Assert.True(message.TryGetIceControlled(out ulong controlled));
        Assert.Equal(0xfffefdfcfbfaf9f8ul, controlled);
        Assert.True(message.VerifyMessageIntegrity(key));
        Assert.True(message.VerifyMessageIntegritySha256(key));
        Assert.False(message.VerifyMessageIntegritySha256("other"u8));
        Assert.True(message.HasFingerprint);
        Assert.Equal(0, message.GetUnknownComprehensionRequired(unknown));
    }

    [Theory]
    [InlineData(16)]
    [InlineData(20)]
    [InlineData(28)]
    [InlineData(32)]
    public void MessageIntegritySha256_VerifiesAtEveryTruncation(int length)
    {
        var buffer = new byte[256];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, StunTransactionId.NewRandom());
        writer.AddUsername("a:b");
        writer.AddMessageIntegritySha256("key"u8, length);
        byte[] wire = writer.Written.ToArray();
        Assert.True(StunMessage.TryParse(wire, out var message, out _));
        Assert.True(message.VerifyMessageIntegritySha256("key"u8));
        Assert.False(message.VerifyMessageIntegrity("key"u8));

        wire[^1] ^= 1;
        Assert.True(StunMessage.TryParse(wire, out message, out _));
        Assert.False(message.VerifyMessageIntegritySha256("key"u8));
    }

    [Fact]
    public void AttributesAfterMessageIntegrity_AreIgnored()
    {
        var buffer = new byte[256];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, StunTransactionId.NewRandom());
        writer.AddUsername("before");
        writer.AddMessageIntegrity("k"u8);
        writer.AddSoftware("after");
        writer.AddAttribute(0x7001, [1, 2, 3]);
        byte[] wire = writer.Written.ToArray();
        Assert.True(StunMessage.TryParse(wire, out var message, out _));
        Assert.True(message.TryGetUsername(out _));
        Assert.False(message.TryGetSoftware(out _));
        Assert.Equal(0, message.GetUnknownComprehensionRequired(new ushort[4]));
        Assert.True(message.VerifyMessageIntegrity("k"u8));
    }

    [Fact]
    public void UnknownComprehensionRequiredAttributes_AreListedOnceEach()
    {
        byte[] wire = TestSupport.BindingRequest(StunTransactionId.NewRandom(), true, (0x0003, new byte[4]), (0x7001, []), (0xC001, [9]), (0x0003, new byte[4]));
        Assert.True(StunMessage.TryParse(wire, out var message, out _));
        var unknown = new ushort[8];
        Assert.Equal([0x0003, 0x7001], unknown.AsSpan(0, message.GetUnknownComprehensionRequired(unknown)).ToArray());
    }

    public static TheoryData<string, string, StunParseError> Malformed => new()
    {
        { "empty", "", StunParseError.TooShort },
        { "19 bytes", "0001 0000 2112a442 000000000000000000000000"[..^2], StunParseError.TooShort },
        { "top bits set", "4001 0000 2112a442 000000000000000000000000", StunParseError.NotStun },
        { "length not aligned", "0001 0002 2112a442 000000000000000000000000 0000", StunParseError.LengthNotAligned },
        { "truncated", "0001 0008 2112a442 000000000000000000000000 80220004", StunParseError.Truncated },
        { "trailing bytes", "0001 0000 2112a442 000000000000000000000000 00000000", StunParseError.TrailingBytes },
        { "attribute overruns", "0001 0008 2112a442 000000000000000000000000 80220008 41424344", StunParseError.AttributeOverrun },
        { "shorter than declared", "0001 0004 2112a442 000000000000000000000000 8022", StunParseError.Truncated },
        { "bad xor family", "0001 000c 2112a442 000000000000000000000000 00200008 00030000 00000000", StunParseError.InvalidAttribute },
        { "xor ipv6 too short", "0001 000c 2112a442 000000000000000000000000 00200008 00020000 00000000", StunParseError.InvalidAttribute },
        { "priority wrong size", "0001 0008 2112a442 000000000000000000000000 00240002 00010000", StunParseError.InvalidAttribute },
        { "use-candidate with value", "0001 0008 2112a442 000000000000000000000000 00250004 00000000", StunParseError.InvalidAttribute },
        { "integrity wrong size", "0001 0008 2112a442 000000000000000000000000 00080004 00000000", StunParseError.InvalidAttribute },
        { "fingerprint wrong size", "0001 0008 2112a442 000000000000000000000000 80280000 00000000", StunParseError.InvalidAttribute },
        { "bad fingerprint", "0001 0008 2112a442 000000000000000000000000 80280004 00000000", StunParseError.BadFingerprint },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void TryParse_RejectsMalformedInputWithAReason(string name, string hex, StunParseError expected)
    {
        Assert.False(StunMessage.TryParse(TestSupport.Hex(hex), out _, out var error), name);
        Assert.Equal(expected, error);
    }

    [Fact]
    public void TryParse_RejectsAttributesAfterFingerprint()
    {
        byte[] wire = TestSupport.BindingRequest(StunTransactionId.NewRandom());
        byte[] longer = [.. wire, 0x80, 0x22, 0x00, 0x00];
        BinaryPrimitives.WriteUInt16BigEndian(longer.AsSpan(2), (ushort)(longer.Length - 20));

        // The CRC no longer matches the longer header, so it reads as a bad fingerprint first.
        Assert.False(StunMessage.TryParse(longer, out _, out var error));
        Assert.Equal(StunParseError.BadFingerprint, error);

        // Re-seal the fingerprint over the longer header: now only the ordering is wrong.
        uint crc = StunCrc32.Compute(longer.AsSpan(0, wire.Length - 8)) ^ StunConstants.FingerprintXor;
        BinaryPrimitives.WriteUInt32BigEndian(longer.AsSpan(wire.Length - 4), crc);
        Assert.False(StunMessage.TryParse(longer, out _, out error));
        Assert.Equal(StunParseError.AttributeAfterFingerprint, error);
    }

    [Fact]
    public void Rfc3489Message_ParsesWithoutCookie()
    {
        byte[] wire = TestSupport.Hex("0001 0000 0102030405060708090a0b0c0d0e0f10");
        Assert.True(StunMessage.TryParse(wire, out var message, out _));
        Assert.False(message.HasMagicCookie);
        Assert.False(StunPacket.IsStun(wire));
    }

    [Theory]
    [InlineData("0001 0000 2112a442 000000000000000000000000", DatagramKind.Stun)]
    [InlineData("0001 0000 2112a443 000000000000000000000000", DatagramKind.Unknown)]
    [InlineData("0001 0000 2112a442", DatagramKind.Unknown)]
    [InlineData("16fefd", DatagramKind.Dtls)]
    [InlineData("c000000001", DatagramKind.QuicLong)]
    [InlineData("41", DatagramKind.TurnChannel)]
    [InlineData("5a", DatagramKind.Quic)]
    [InlineData("80", DatagramKind.Rtp)]
    [InlineData("", DatagramKind.Unknown)]
    [InlineData("08", DatagramKind.Unknown)]
    public void Classify_FollowsRfc7983(string hex, DatagramKind expected)
    {
        Assert.Equal(expected, StunPacket.Classify(TestSupport.Hex(hex)));
    }

    [Fact]
    public void Writer_RefusesToOverflowItsBuffer()
    {
        var buffer = new byte[24];
        try
        {
            var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, default);
            writer.AddSoftware("longer than four bytes");
            Assert.Fail("The writer overflowed.");
        }
        catch (InvalidOperationException)
        {
        }
    }

    [Fact]
    public void Writer_RejectsOutOfRangeValues()
    {
        var buffer = new byte[2048];
        Assert.Throws<ArgumentOutOfRangeException>(() => new StunMessageWriter(buffer, StunMessageType.BindingError, default).AddErrorCode(200, "no"));
        Assert.Throws<ArgumentException>(() => new StunMessageWriter(buffer, StunMessageType.BindingRequest, default).AddUsername(new string('u', 513)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new StunMessageWriter(buffer, StunMessageType.BindingRequest, default).AddMessageIntegritySha256("k"u8, 12));
    }
}
