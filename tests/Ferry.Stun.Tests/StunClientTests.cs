using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Ferry.Stun.Tests;

public sealed class StunClientTests
{
    private static readonly IPEndPoint s_server = new(IPAddress.Parse("192.0.2.50"), 3478);
    private static readonly IPEndPoint s_mapped = new(IPAddress.Parse("203.0.113.9"), 61000);

    [Fact]
    public async Task Retransmissions_FollowTheRfc8489Schedule()
    {
        // Defaults: RTO 500 ms doubling, Rc = 7, Rm = 16. RFC 8489 section 6.2.1 gives the
        // resulting send times 0, 500, 1500, 3500, 7500, 15500, 31500 ms and failure at 39500 ms.
        var time = new ManualTimeProvider();
        var sends = Channel.CreateUnbounded<long>();
        using var client = new StunClient(
            (_, _, _) =>
            {
                sends.Writer.TryWrite(time.GetTimestamp());
                return ValueTask.CompletedTask;
            },
            timeProvider: time);
        long start = time.GetTimestamp();

        var query = client.QueryAsync(s_server, TestContext.Current.CancellationToken);
        long[] expected = [0, 500, 1500, 3500, 7500, 15500, 31500];
        for (int i = 0; i < expected.Length; i++)
        {
            long sentAt = await sends.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().DefaultTimeout();
            Assert.Equal(expected[i], (sentAt - start) / TimeSpan.TicksPerMillisecond);
            await time.WaitForTimerAsync().DefaultTimeout();
            long next = i + 1 < expected.Length ? expected[i + 1] : 39500;
            time.Advance(TimeSpan.FromMilliseconds(next - expected[i]));
        }

        var result = await query.DefaultTimeout();
        Assert.Equal(StunBindingStatus.Timeout, result.Status);
        Assert.Equal(7, result.Transmissions);
        Assert.Equal(39500, (time.GetTimestamp() - start) / TimeSpan.TicksPerMillisecond);
        Assert.False(sends.Reader.TryRead(out _));
        Assert.Equal(0, client.PendingCount);
    }

    [Fact]
    public async Task AnswerToARetransmission_CompletesTheQuery()
    {
        StunClient? client = null;
        int sent = 0;
        client = new StunClient(
            (datagram, to, _) =>
            {
                // The first two requests are "lost"; the third is answered.
                if (++sent == 3)
                {
                    Assert.True(client!.TryHandleIncoming(Answer(datagram.Span, success: true), to));
                }

                return ValueTask.CompletedTask;
            },
            TestSupport.FastClient());
        using (client)
        {
            var result = await client.QueryAsync(s_server, TestContext.Current.CancellationToken).DefaultTimeout();
            Assert.True(result.IsSuccess, result.ToString());
            Assert.Equal(s_mapped, result.MappedAddress);
            Assert.Equal(s_server, result.Server);
            Assert.Equal(3, result.Transmissions);
        }
    }

    [Fact]
    public async Task ErrorResponse_ReportsCodeAndReason()
    {
        StunClient? client = null;
        client = new StunClient(
            (datagram, to, _) =>
            {
                client!.TryHandleIncoming(Answer(datagram.Span, success: false), to);
                return ValueTask.CompletedTask;
            },
            TestSupport.FastClient());
        using (client)
        {
            var result = await client.QueryAsync(s_server, TestContext.Current.CancellationToken).DefaultTimeout();
            Assert.Equal(StunBindingStatus.ErrorResponse, result.Status);
            Assert.Equal(420, result.ErrorCode);
            Assert.Equal("Unknown Attribute", result.ErrorReason);
            Assert.Null(result.MappedAddress);
        }
    }

    [Fact]
    public async Task Responses_FromTheWrongSourceOrDamaged_AreNotAccepted()
    {
        var requests = Channel.CreateUnbounded<byte[]>();
        using var client = new StunClient(
            (datagram, _, _) =>
            {
                requests.Writer.TryWrite(datagram.ToArray());
                return ValueTask.CompletedTask;
            },
            new StunClientOptions { InitialRto = TimeSpan.FromSeconds(5) });
        var query = client.QueryAsync(s_server, TestContext.Current.CancellationToken);
        byte[] request = await requests.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().DefaultTimeout();
        byte[] answer = Answer(request, success: true);

        Assert.False(client.TryHandleIncoming(answer, new IPEndPoint(IPAddress.Parse("192.0.2.51"), 3478)));
        Assert.False(client.TryHandleIncoming(answer, new IPEndPoint(s_server.Address, 3479)));
        byte[] damaged = (byte[])answer.Clone();
        damaged[^1] ^= 1;
        Assert.True(client.TryHandleIncoming(damaged, s_server));
        Assert.False(query.IsCompleted);

        // The dual-stack spelling of the right server is the right server.
        Assert.True(client.TryHandleIncoming(answer, new IPEndPoint(s_server.Address.MapToIPv6(), s_server.Port)));
        var result = await query.DefaultTimeout();
        Assert.True(result.IsSuccess);
        Assert.Equal(1, result.Transmissions);
    }

    [Fact]
    public void TryHandleIncoming_LeavesEverythingElseToTheSocketOwner()
    {
        using var client = new StunClient((_, _, _) => ValueTask.CompletedTask);
        Assert.False(client.TryHandleIncoming(TestSupport.Hex("c0000000010800000000000000000000000000000000"), s_server));
        Assert.False(client.TryHandleIncoming([], s_server));
        Assert.False(client.TryHandleIncoming(TestSupport.BindingRequest(StunTransactionId.NewRandom()), s_server));
        Assert.False(client.TryHandleIncoming(Rfc5769Vectors.ResponseIPv4, s_server));
    }

    [Fact]
    public async Task Timeout_IsReportedWithFastSettings()
    {
        int sent = 0;
        using var client = new StunClient(
            (_, _, _) =>
            {
                Interlocked.Increment(ref sent);
                return ValueTask.CompletedTask;
            },
            new StunClientOptions { InitialRto = TimeSpan.FromMilliseconds(10), MaxTransmissions = 3, FinalWaitMultiplier = 2 });
        var result = await client.QueryAsync(s_server, TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal(StunBindingStatus.Timeout, result.Status);
        Assert.Equal(3, sent);
        Assert.Equal(0, client.PendingCount);
    }

    [Fact]
    public async Task SendFailure_IsReported()
    {
        using var client = new StunClient((_, _, _) => throw new SocketException((int)SocketError.NetworkUnreachable));
        var result = await client.QueryAsync(s_server, TestContext.Current.CancellationToken).DefaultTimeout();
        Assert.Equal(StunBindingStatus.SendFailed, result.Status);
        Assert.Equal(SocketError.NetworkUnreachable, result.SocketError);
    }

    [Fact]
    public async Task Cancellation_AndDispose_EndPendingQueries()
    {
        var client = new StunClient((_, _, _) => ValueTask.CompletedTask, new StunClientOptions { InitialRto = TimeSpan.FromSeconds(30) });
        using var cts = new CancellationTokenSource();
        var canceled = client.QueryAsync(s_server, cts.Token);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => canceled.DefaultTimeout());

        var disposed = client.QueryAsync(s_server, TestContext.Current.CancellationToken);
        client.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => disposed.DefaultTimeout());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.QueryAsync(s_server, TestContext.Current.CancellationToken));
        Assert.Equal(0, client.PendingCount);
    }

    [Fact]
    public async Task QueryAll_ReportsWhichServersAnswered()
    {
        await using var first = new StunServer(TestSupport.LoopbackServer());
        await using var second = new StunServer(TestSupport.LoopbackServer());
        first.Start();
        second.Start();

        // A bound socket that never answers stands in for a relay that is down.
        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        silent.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        await using var client = StunSocketClient.Create(new IPEndPoint(IPAddress.Loopback, 0), new StunClientOptions
        {
            InitialRto = TimeSpan.FromMilliseconds(20),
            MaxTransmissions = 3,
            FinalWaitMultiplier = 2,
        });
        IPEndPoint[] servers = [first.LocalEndPoints[0], (IPEndPoint)silent.LocalEndPoint!, second.LocalEndPoints[0]];
        var results = await client.QueryAllAsync(servers, TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.Equal(servers, results.Select(r => r.Server));
        Assert.True(results[0].IsSuccess, results[0].ToString());
        Assert.Equal(StunBindingStatus.Timeout, results[1].Status);
        Assert.True(results[2].IsSuccess, results[2].ToString());
        Assert.All(new[] { results[0], results[2] }, r => Assert.Equal(client.LocalEndPoint, r.MappedAddress));
    }

    [Fact]
    public async Task SharedSocket_StunAndOtherTrafficAreToldApart()
    {
        // The socket owner (QUIC later) receives everything and offers each datagram to the STUN client first.
        await using var server = new StunServer(TestSupport.LoopbackServer());
        server.Start();
        using var shared = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        shared.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var other = Channel.CreateUnbounded<byte[]>();
        using var client = new StunClient(
            async (datagram, to, ct) => await shared.SendToAsync(datagram, SocketFlags.None, to, ct),
            TestSupport.FastClient());
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var ownerLoop = Task.Run(
            async () =>
            {
                var buffer = new byte[2048];
                while (!stop.IsCancellationRequested)
                {
                    var r = await shared.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), stop.Token);
                    if (!client.TryHandleIncoming(buffer.AsSpan(0, r.ReceivedBytes), (IPEndPoint)r.RemoteEndPoint))
                    {
                        other.Writer.TryWrite(buffer[..r.ReceivedBytes]);
                    }
                }
            },
            TestContext.Current.CancellationToken);

        using var quicPeer = new RawPeer();
        byte[] quicLike = TestSupport.Hex("c3000000010811223344556677880000");
        await quicPeer.SendAsync(quicLike, (IPEndPoint)shared.LocalEndPoint!);
        var result = await client.QueryAsync(server.LocalEndPoints[0], TestContext.Current.CancellationToken).DefaultTimeout();

        Assert.True(result.IsSuccess, result.ToString());
        Assert.Equal(shared.LocalEndPoint, result.MappedAddress);
        Assert.Equal(quicLike, await other.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().DefaultTimeout());

        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => ownerLoop.DefaultTimeout());
    }

    // Plays a STUN server for a request the client just sent.
    private static byte[] Answer(ReadOnlySpan<byte> request, bool success)
    {
        Assert.True(StunMessage.TryParse(request, out var message, out _));
        Assert.Equal(StunMessageType.BindingRequest, message.Type);
        Assert.True(message.HasFingerprint);
        var buffer = new byte[256];
        var writer = new StunMessageWriter(buffer, success ? StunMessageType.BindingSuccess : StunMessageType.BindingError, message.TransactionId);
        if (success)
        {
            writer.AddXorMappedAddress(s_mapped);
        }
        else
        {
            writer.AddErrorCode(420, "Unknown Attribute");
            writer.AddUnknownAttributes([0x0003]);
        }

        writer.AddFingerprint();
        return writer.Written.ToArray();
    }
}
