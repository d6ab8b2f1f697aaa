using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Stun.Tests;

public sealed class StunServerTests
{
    private static readonly PeerAddress s_peer4 = PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse("198.51.100.20"), 54321));
    private static readonly PeerAddress s_peer6 = PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse("2001:db8:1:2:3:4:5:6"), 3479));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Process_AnswersBindingWithXorMappedAddressAndFingerprint(bool ipv6)
    {
        var server = new StunServer(TestSupport.LoopbackServer());
        var peer = ipv6 ? s_peer6 : s_peer4;
        var id = StunTransactionId.NewRandom();
        byte[] request = TestSupport.BindingRequest(id);
        var response = new byte[256];

        int length = server.Process(request, peer, response, out _);

        Assert.True(length > 0);
        Assert.True(length <= StunServer.MaxAmplificationFactor * request.Length);
        Assert.True(StunMessage.TryParse(response.AsSpan(0, length), out var message, out var error), error.ToString());
        Assert.Equal(StunMessageType.BindingSuccess, message.Type);
        Assert.Equal(id, message.TransactionId);
        Assert.True(message.HasFingerprint);
        Assert.True(message.TryGetXorMappedAddress(out var mapped));
        Assert.Equal(peer.ToEndPoint(), mapped);
        Assert.False(message.TryGetMappedAddress(out _));
        Assert.Equal(1, server.GetStatistics().SuccessResponses);
    }

    [Fact]
    public void Process_AnswersIPv4MappedPeersAsIPv4()
    {
        var server = new StunServer(TestSupport.LoopbackServer());
        var peer = PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse("::ffff:192.0.2.9"), 1000));
        var response = new byte[256];
        int length = server.Process(TestSupport.BindingRequest(StunTransactionId.NewRandom()), peer, response, out _);
        Assert.True(StunMessage.TryParse(response.AsSpan(0, length), out var message, out _));
        Assert.True(message.TryGetXorMappedAddress(out var mapped));
        Assert.Equal(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 1000), mapped);
    }

    public static TheoryData<string, string, StunDropReason> Dropped => new()
    {
        { "QUIC long header", "c0000000010800000000000000000000000000000000", StunDropReason.NotStun },
        { "short", "0001000021", StunDropReason.NotStun },
        { "RFC 3489 request", "0001 0000 0102030405060708090a0b0c0d0e0f10", StunDropReason.NoMagicCookie },
        { "success response", "0101 0000 2112a442 000000000000000000000000", StunDropReason.NotRequest },
        { "error response", "0111 0000 2112a442 000000000000000000000000", StunDropReason.NotRequest },
        { "indication", "0011 0000 2112a442 000000000000000000000000", StunDropReason.NotRequest },
        { "allocate request", "0003 0000 2112a442 000000000000000000000000", StunDropReason.UnsupportedMethod },
        { "truncated", "0001 0008 2112a442 000000000000000000000000 0000", StunDropReason.MalformedHeader },
        { "wrong length", "0001 0004 2112a442 000000000000000000000000 0000000000000000", StunDropReason.MalformedHeader },
        { "unaligned length", "0001 0002 2112a442 000000000000000000000000 0000", StunDropReason.MalformedHeader },
        { "bad fingerprint", "0001 0008 2112a442 000000000000000000000000 80280004 deadbeef", StunDropReason.BadFingerprint },
    };

    [Theory]
    [MemberData(nameof(Dropped))]
    public void Process_DropsWhatItMustNotAnswer(string name, string hex, StunDropReason expected)
    {
        var server = new StunServer(TestSupport.LoopbackServer());
        int length = server.Process(TestSupport.Hex(hex), s_peer4, new byte[256], out var reason);
        Assert.True(length == 0, name);
        Assert.Equal(expected, reason);
        var stats = server.GetStatistics();
        Assert.Equal(1, stats.DroppedFor(expected));
        Assert.Equal(0, stats.ResponsesSent);
    }

    [Theory]
    [InlineData("00200008 00030000 00000000")] // XOR-MAPPED-ADDRESS with family 3
    [InlineData("00240008 00000000 00000000")] // PRIORITY of 8 bytes
    [InlineData("00060010 41424344")] // USERNAME overrunning the message
    public void Process_AnswersMalformedAttributesWith400(string attributes)
    {
        byte[] body = TestSupport.Hex(attributes);
        byte[] request = [.. TestSupport.Hex("0001 0000 2112a442 0102030405060708090a0b0c"), .. body];
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(2), (ushort)body.Length);
        var server = new StunServer(TestSupport.LoopbackServer());
        var response = new byte[256];

        int length = server.Process(request, s_peer4, response, out _);

        Assert.True(length > 0);
        Assert.True(length <= StunServer.MaxAmplificationFactor * request.Length);
        Assert.True(StunMessage.TryParse(response.AsSpan(0, length), out var message, out _));
        Assert.Equal(StunMessageType.BindingError, message.Type);
        Assert.Equal(StunTransactionId.Read(request.AsSpan(8)), message.TransactionId);
        Assert.True(message.TryGetErrorCode(out int code, out _));
        Assert.Equal(400, code);
        Assert.True(message.HasFingerprint);
    }

    [Fact]
    public void Process_AnswersUnknownComprehensionRequiredWith420()
    {
        // CHANGE-REQUEST (RFC 5780) is comprehension-required and not supported; 0xC001 is optional.
        byte[] request = TestSupport.BindingRequest(StunTransactionId.NewRandom(), true, (0x0003, new byte[4]), (0xC001, [1]), (0x7ABC, []));
        var server = new StunServer(TestSupport.LoopbackServer());
        var response = new byte[256];

        int length = server.Process(request, s_peer4, response, out _);

        Assert.True(length > 0 && length <= StunServer.MaxAmplificationFactor * request.Length);
        Assert.True(StunMessage.TryParse(response.AsSpan(0, length), out var message, out _));
        Assert.True(message.TryGetErrorCode(out int code, out var reason));
        Assert.Equal(420, code);
        Assert.Equal("Unknown Attribute", reason);
        var unknown = new ushort[8];
        Assert.Equal([0x0003, 0x7ABC], unknown.AsSpan(0, message.GetUnknownAttributes(unknown)).ToArray());
    }

    [Fact]
    public void Process_RequestsWithCredentialsAndIceAttributesAreAnswered()
    {
        var buffer = new byte[256];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, StunTransactionId.NewRandom());
        writer.AddUsername("a:b");
        writer.AddPriority(1);
        writer.AddUseCandidate();
        writer.AddIceControlling(42);
        writer.AddMessageIntegrity("pw"u8);
        writer.AddFingerprint();
        var server = new StunServer(TestSupport.LoopbackServer());
        Assert.True(server.Process(writer.Written, s_peer4, new byte[256], out _) > 0);
        Assert.True(server.Process(Rfc5769Vectors.Request, s_peer4, new byte[256], out _) > 0);
    }

    [Fact]
    public void Amplification_WorstCasesStayWithinTheBound()
    {
        var server = new StunServer(TestSupport.LoopbackServer());
        var response = new byte[256];

        // Smallest possible request, largest success answer (IPv6).
        byte[] bare = TestSupport.Hex("0001 0000 2112a442 0102030405060708090a0b0c");
        int length = server.Process(bare, s_peer6, response, out _);
        Assert.Equal(52, length);
        Assert.True(length <= StunServer.MaxAmplificationFactor * bare.Length);

        // Many tiny unknown attributes: the 420 lists at most 16 of them.
        var unknown = Enumerable.Range(0x7000, 40).Select(t => ((ushort)t, Array.Empty<byte>())).ToArray();
        byte[] many = TestSupport.BindingRequest(StunTransactionId.NewRandom(), false, unknown);
        length = server.Process(many, s_peer6, response, out _);
        Assert.True(length > 0 && length <= StunServer.MaxAmplificationFactor * many.Length, $"{length} vs {many.Length}");

        // One unknown attribute, the smallest 420 trigger.
        byte[] one = TestSupport.BindingRequest(StunTransactionId.NewRandom(), false, (0x0003, []));
        length = server.Process(one, s_peer6, response, out _);
        Assert.True(length > 0 && length <= StunServer.MaxAmplificationFactor * one.Length, $"{length} vs {one.Length}");

        // The smallest 400 trigger: an attribute header that overruns.
        byte[] overrun = TestSupport.Hex("0001 0004 2112a442 0102030405060708090a0b0c 80220004");
        length = server.Process(overrun, s_peer6, response, out _);
        Assert.True(length > 0 && length <= StunServer.MaxAmplificationFactor * overrun.Length, $"{length} vs {overrun.Length}");
    }

    [Fact]
    public void RateLimit_IsPerSourceAndRefillsWithTime()
    {
        var time = new ManualTimeProvider();
        var options = TestSupport.LoopbackServer();
        options.BurstPerSource = 5;
        options.RequestsPerSecondPerSource = 2;
        var server = new StunServer(options, timeProvider: time);
        var response = new byte[256];
        int Answered(PeerAddress peer, int count)
        {
            int n = 0;
            for (int i = 0; i < count; i++)
            {
                if (server.Process(TestSupport.BindingRequest(StunTransactionId.NewRandom()), peer, response, out _) > 0)
                {
                    n++;
                }
            }

            return n;
        }

        Assert.Equal(5, Answered(s_peer4, 10));
        Assert.Equal(5, server.GetStatistics().DroppedFor(StunDropReason.RateLimited));

        // Another port of the same address shares the bucket; another address has its own.
        Assert.Equal(0, Answered(s_peer4 with { Port = 1 }, 1));
        Assert.Equal(5, Answered(PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse("198.51.100.21"), 1)), 10));

        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(2, Answered(s_peer4, 10));
        time.Advance(TimeSpan.FromHours(1));
        Assert.Equal(5, Answered(s_peer4, 10));
    }

    [Fact]
    public void RateLimit_GroupsIPv6ByPrefix64()
    {
        var options = TestSupport.LoopbackServer();
        options.BurstPerSource = 3;
        options.RequestsPerSecondPerSource = 1;
        var server = new StunServer(options, timeProvider: new ManualTimeProvider());
        int answered = 0;
        for (int i = 0; i < 10; i++)
        {
            // Rotating the interface id within one /64 does not earn fresh tokens.
            var peer = PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse($"2001:db8:1:2::{i + 1:x}"), 5000));
            answered += server.Process(TestSupport.BindingRequest(StunTransactionId.NewRandom()), peer, new byte[256], out _) > 0 ? 1 : 0;
        }

        Assert.Equal(3, answered);
        var other = PeerAddress.FromEndPoint(new IPEndPoint(IPAddress.Parse("2001:db8:1:3::1"), 5000));
        Assert.True(server.Process(TestSupport.BindingRequest(StunTransactionId.NewRandom()), other, new byte[256], out _) > 0);
    }

    [Fact]
    public void RateLimiter_StaysBoundedUnderASourceFlood()
    {
        var time = new ManualTimeProvider();
        var limiter = new StunRateLimiter(1, 2, 100, time);
        for (uint i = 0; i < 10_000; i++)
        {
            limiter.TryAcquire(new PeerAddress(false, 0, i, 0));
        }

        Assert.Equal(100, limiter.TrackedSources);

        // Once the tracked sources have refilled, a sweep makes room for newcomers.
        time.Advance(TimeSpan.FromSeconds(10));
        Assert.True(limiter.TryAcquire(new PeerAddress(false, 0, 999_999, 0)));
        Assert.Equal(1, limiter.TrackedSources);
    }

    [Fact]
    public async Task Loopback_IPv4_ClientLearnsItsAddress()
    {
        await using var server = new StunServer(TestSupport.LoopbackServer());
        server.Start();
        var serverEndPoint = Assert.Single(server.LocalEndPoints);
        Assert.NotEqual(0, serverEndPoint.Port);

        await using var client = StunSocketClient.Create(new IPEndPoint(IPAddress.Loopback, 0), TestSupport.FastClient());
        var result = await client.QueryAsync(serverEndPoint, TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.True(result.IsSuccess, result.ToString());
        Assert.Equal(client.LocalEndPoint, result.MappedAddress);
        Assert.Equal(serverEndPoint, result.Server);
        Assert.True(result.RoundTripTime >= TimeSpan.Zero);
        TestSupport.Output(result.ToString());
    }

    [Fact]
    public async Task Loopback_IPv6_ClientLearnsItsAddress()
    {
        if (!TestSupport.IPv6LoopbackAvailable())
        {
            Assert.Skip("::1 is not available on this host");
        }

        await using var server = new StunServer(TestSupport.LoopbackServer(new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.IPv6Loopback, 0)));
        server.Start();
        var v6 = server.LocalEndPoints.Single(e => e.AddressFamily == AddressFamily.InterNetworkV6);

        await using var client = StunSocketClient.Create(new IPEndPoint(IPAddress.IPv6Loopback, 0), TestSupport.FastClient());
        var result = await client.QueryAsync(v6, TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.True(result.IsSuccess, result.ToString());
        Assert.Equal(client.LocalEndPoint, result.MappedAddress);
    }

    [Fact]
    public async Task Loopback_DualStackClientAsksBothFamilies()
    {
        if (!TestSupport.IPv6LoopbackAvailable())
        {
            Assert.Skip("::1 is not available on this host");
        }

        await using var server = new StunServer(TestSupport.LoopbackServer(new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.IPv6Loopback, 0)));
        server.Start();
        await using var client = StunSocketClient.Create(options: TestSupport.FastClient());
        var results = await client.QueryAllAsync(server.LocalEndPoints, TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.All(results, r => Assert.True(r.IsSuccess, r.ToString()));
        Assert.Equal(IPAddress.Loopback, results[0].MappedAddress!.Address);
        Assert.Equal(IPAddress.IPv6Loopback, results[1].MappedAddress!.Address);
        Assert.All(results, r => Assert.Equal(client.LocalEndPoint.Port, r.MappedAddress!.Port));
    }

    [Fact]
    public async Task Loopback_MalformedTrafficIsRejectedAndTheServerKeepsAnswering()
    {
        await using var server = new StunServer(TestSupport.LoopbackServer());
        server.Start();
        var target = server.LocalEndPoints[0];
        using var raw = new RawPeer();

        byte[] good = TestSupport.BindingRequest(StunTransactionId.NewRandom());
        byte[] badFingerprint = (byte[])good.Clone();
        badFingerprint[^1] ^= 0xFF;
        byte[][] silent =
        [
            good[..^4], // truncated
            [.. good, 0, 0, 0, 0], // longer than the header says
            badFingerprint,
            TestSupport.Hex("c0000000010800000000000000000000000000000000"), // QUIC
            TestSupport.Hex("0101 0000 2112a442 000000000000000000000000"), // a response
            TestSupport.Hex("0001 0000 0102030405060708090a0b0c0d0e0f10"), // RFC 3489
            [],
        ];
        foreach (var datagram in silent)
        {
            await raw.SendAsync(datagram, target);
        }

        // The first answer the peer gets is the 420, so none of the above was answered.
        var unknownId = StunTransactionId.NewRandom();
        await raw.SendAsync(TestSupport.BindingRequest(unknownId, true, (0x0003, new byte[4])), target);
        byte[] reply = await raw.ReceiveAsync();
        Assert.True(StunMessage.TryParse(reply, out var message, out _));
        Assert.Equal(unknownId, message.TransactionId);
        Assert.True(message.TryGetErrorCode(out int code, out _));
        Assert.Equal(420, code);

        var goodId = StunMessage.TryParse(good, out var goodMessage, out _) ? goodMessage.TransactionId : default;
        await raw.SendAsync(good, target);
        reply = await raw.ReceiveAsync();
        Assert.True(StunMessage.TryParse(reply, out message, out _));
        Assert.Equal(goodId, message.TransactionId);
        Assert.True(message.TryGetXorMappedAddress(out var mapped));
        Assert.Equal(raw.LocalEndPoint, mapped);

        // Someone else is served too.
        await using var client = StunSocketClient.Create(new IPEndPoint(IPAddress.Loopback, 0), TestSupport.FastClient());
        Assert.True((await client.QueryAsync(target, TestContext.Current.CancellationToken).DefaultTimeout()).IsSuccess);

        var stats = server.GetStatistics();
        Assert.Equal(1, stats.DroppedFor(StunDropReason.BadFingerprint));
        Assert.Equal(2, stats.DroppedFor(StunDropReason.MalformedHeader));
        Assert.Equal(1, stats.DroppedFor(StunDropReason.NoMagicCookie));
        Assert.Equal(1, stats.DroppedFor(StunDropReason.NotRequest));
        Assert.Equal(0, stats.DroppedFor(StunDropReason.InternalError));
        Assert.Equal(1, stats.ErrorResponses);
    }

    [Fact]
    public async Task Loopback_ResponsesStayWithinTheAmplificationBound()
    {
        await using var server = new StunServer(TestSupport.LoopbackServer());
        server.Start();
        using var raw = new RawPeer();
        byte[][] requests =
        [
            TestSupport.Hex("0001 0000 2112a442 0102030405060708090a0b0c"),
            TestSupport.BindingRequest(StunTransactionId.NewRandom(), false, (0x0003, [])),
            TestSupport.Hex("0001 0004 2112a442 0102030405060708090a0b0c 80220004"),
        ];
        foreach (var request in requests)
        {
            await raw.SendAsync(request, server.LocalEndPoints[0]);
            byte[] reply = await raw.ReceiveAsync();
            Assert.True(reply.Length <= StunServer.MaxAmplificationFactor * request.Length, $"{reply.Length} > 3 x {request.Length}");
        }
    }

    [Fact]
    public async Task Stop_EndsTheLoopsAndReleasesThePort()
    {
        var server = new StunServer(TestSupport.LoopbackServer());
        server.Start();
        var endPoint = server.LocalEndPoints[0];
        await server.DisposeAsync().AsTask().DefaultTimeout();

        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(endPoint);
    }

    [Fact]
    public async Task RunAsync_StopsOnCancellation()
    {
        await using var server = new StunServer(TestSupport.LoopbackServer());
        using var cts = new CancellationTokenSource();
        var run = server.RunAsync(cts.Token);
        Assert.Single(server.LocalEndPoints);
        await cts.CancelAsync();
        await run.DefaultTimeout();
    }

    [Fact]
    public void Start_FailsCleanlyWhenThePortIsTaken()
    {
        using var squatter = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        squatter.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var server = new StunServer(TestSupport.LoopbackServer((IPEndPoint)squatter.LocalEndPoint!));
        Assert.Throws<SocketException>(server.Start);
    }
}

/// <summary>A bare UDP socket on loopback for sending hand-made datagrams.</summary>
internal sealed class RawPeer : IDisposable
{
    private readonly Socket _socket;

    public RawPeer(AddressFamily family = AddressFamily.InterNetwork)
    {
        _socket = new Socket(family, SocketType.Dgram, ProtocolType.Udp);
        _socket.Bind(new IPEndPoint(family == AddressFamily.InterNetwork ? IPAddress.Loopback : IPAddress.IPv6Loopback, 0));
        LocalEndPoint = (IPEndPoint)_socket.LocalEndPoint!;
    }

    public IPEndPoint LocalEndPoint { get; }

    public async Task SendAsync(byte[] datagram, IPEndPoint to) =>
        await _socket.SendToAsync(datagram, SocketFlags.None, to, TestContext.Current.CancellationToken).AsTask().DefaultTimeout();

    public async Task<byte[]> ReceiveAsync()
    {
        var buffer = new byte[2048];
        var result = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), TestContext.Current.CancellationToken).AsTask().DefaultTimeout();
        return buffer[..result.ReceivedBytes];
    }

    public void Dispose() => _socket.Dispose();
}
