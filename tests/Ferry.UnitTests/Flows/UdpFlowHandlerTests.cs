using System.Net;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.UnitTests.Flows;

/// <summary>The connector's UDP flows, through a real <see cref="FlowHandler"/>, in-memory streams and datagrams, and a real UDP echo socket.</summary>
public sealed class UdpFlowHandlerTests : FlowTestBase
{
    private const string Me = "device/dv_me";
    private const string Someone = "device/dv_someone";
    private const long StreamId = 8;

    private static readonly AccessTable Access = new(
    [
        new(Me, new ResourceGrant("rs_lo", "loopback", "nw_1", "127.0.0.1", "none", "all")),
        new(Me, new ResourceGrant("rs_apps", "apps", "nw_1", "*.test", "none", "all")),
        new(Me, new ResourceGrant("rs_narrow", "narrow", "nw_1", "narrow.test", "all", "53")),
        new(Someone, new ResourceGrant("rs_secret", "secret", "nw_1", "secret.test", "all", "all")),
    ]);

    private static readonly StubResolver Resolver = new((name, _) => Task.FromResult(name == "missing.test"
        ? NameResolution.Failed(FlowStatus.NameNotFound, "DNS server 10.0.0.2:53 says 'missing.test' does not exist (NXDOMAIN)")
        : NameResolution.Found([IPAddress.Loopback])));

    private sealed record Opened(FlowReply Reply, UdpFlowChannel? Flow, Task Served, UdpDatagramMux ClientMux, UdpDatagramMux ConnectorMux);

    private async Task<Opened> OpenAsync(FlowHandler handler, string host, int port, CancellationToken revoke, int maxDatagram = 1200)
    {
        var (clientMux, connectorMux) = InMemoryDatagrams.CreatePair(maxDatagram);
        var (near, far) = DuplexStreams.CreatePair();
        var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, Me, Access, revoke, datagrams: connectorMux, streamId: StreamId);
        var (reply, flow) = await clientMux.OpenAsync(StreamId, near, DuplexStreams.CompleteWrites, new FlowHeader(FlowProtocol.Udp, host, port), Token)
            .WaitAsync(FlowTestSupport.Bound, Token);
        return new Opened(reply, flow, served, clientMux, connectorMux);
    }

    private async Task<byte[]> ReceiveAsync(IUdpFlow flow)
    {
        var buffer = new byte[UdpFlowFraming.MaxPayloadLength];
        var length = await flow.ReceiveAsync(buffer, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.True(length >= 0, $"the flow ended: {(flow.Ended.IsCompleted ? flow.Ended.Result : null)}");
        return buffer[..length];
    }

    [Fact]
    public async Task An_allowed_flow_echoes_every_payload_intact_by_datagram_and_by_stream()
    {
        await using var echo = new UdpEchoServer();
        var opened = await OpenAsync(new FlowHandler(Resolver), "echo.test", echo.Port, Token);
        Assert.True(opened.Reply.IsOk, opened.Reply.ToString());
        Assert.Contains("(127.0.0.1:", opened.Reply.Message, StringComparison.Ordinal);
        var flow = opened.Flow!;
        await using (flow)
        {
            // One at a time, so loopback UDP never has to queue; sizes from empty to past a datagram, and the largest IPv4 UDP payload.
            int[] sizes = [0, 1, 100, 1000, 1190, 1200, 4000, 20_000, 65_507];
            for (var i = 0; i < 200 + sizes.Length; i++)
            {
                var size = i < sizes.Length ? sizes[i] : 1 + (i * 37 % 1100);
                var payload = FlowTestSupport.RandomBytes(size, seed: i);
                Assert.True(await flow.SendAsync(payload, Token));
                Assert.Equal(payload, await ReceiveAsync(flow));
            }
            var counters = flow.Counters;
            Assert.Equal(209, counters.PacketsSent);
            Assert.Equal(209, counters.PacketsReceived);
            // 4000, 20000 and 65507 bytes cannot ride a 1200-byte datagram: they took the stream both ways.
            Assert.Equal(3 + (sizes.Count(s => s + 1 > 1200) - 3), counters.SentOnStream);
            Assert.Equal(counters.SentOnStream, counters.ReceivedOnStream);
            Assert.Equal(209, echo.Received);
        }
        await opened.Served.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, opened.ConnectorMux.Count);
        Assert.Equal(0, opened.ClientMux.Count);
    }

    [Fact]
    public async Task Without_datagrams_every_payload_rides_the_stream()
    {
        await using var echo = new UdpEchoServer();
        var opened = await OpenAsync(new FlowHandler(Resolver), "127.0.0.1", echo.Port, Token, maxDatagram: 0);
        await using var flow = opened.Flow!;
        var payload = FlowTestSupport.RandomBytes(10, seed: 3);
        Assert.True(await flow.SendAsync(payload, Token));
        Assert.Equal(payload, await ReceiveAsync(flow));
        Assert.Equal(1, flow.Counters.SentOnStream);
        Assert.Equal(1, flow.Counters.ReceivedOnStream);
    }

    public static TheoryData<string, string, int, FlowStatus, string> Refusals => new()
    {
        { "not granted", "secret.test", 53, FlowStatus.Denied, "device/dv_me is not granted resource 'secret'" },
        { "port not allowed", "narrow.test", 54, FlowStatus.Denied, "allows UDP ports 53, not 54" },
        { "no such resource", "10.99.0.1", 53, FlowStatus.NoSuchResource, "no IP or CIDR resource covers 10.99.0.1" },
        { "name not found", "missing.test", 53, FlowStatus.NameNotFound, "NXDOMAIN" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public async Task Refused_flows_say_why_and_leave_nothing_registered(string why, string host, int port, FlowStatus status, string reason)
    {
        _ = why;
        var opened = await OpenAsync(new FlowHandler(Resolver), host, port, Token);
        Assert.Equal(status, opened.Reply.Status);
        Assert.Contains(reason, opened.Reply.Message, StringComparison.Ordinal);
        Assert.Null(opened.Flow);
        await opened.Served.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, opened.ClientMux.Count);
        Assert.Equal(0, opened.ConnectorMux.Count);
    }

    [Fact]
    public async Task An_idle_flow_is_ended_by_the_connector_which_says_why()
    {
        await using var echo = new UdpEchoServer();
        var handler = new FlowHandler(Resolver, new FlowHandlerOptions { UdpIdleTimeout = TimeSpan.FromMilliseconds(300) });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var opened = await OpenAsync(handler, "127.0.0.1", echo.Port, Token);
        await using var flow = opened.Flow!;
        Assert.True(await flow.SendAsync("ping"u8.ToArray(), Token));
        // On a loaded machine the 0.3 s can pass before the ping is even sent; then the flow has ended, and the end is what this test checks.
        var buffer = new byte[UdpFlowFraming.MaxPayloadLength];
        var length = await flow.ReceiveAsync(buffer, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        if (length >= 0)
        {
            Assert.Equal("ping"u8.ToArray(), buffer[..length]);
        }

        var end = await flow.Ended.WaitAsync(FlowTestSupport.Bound, Token);
        // Never early: the idle timer runs from the last packet, which came after the open began.
        Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(280), $"the flow ended {clock.ElapsedMilliseconds} ms after it was opened");
        Assert.True(end.ByPeer);
        Assert.Equal(FlowStatus.Timeout, end.Status);
        Assert.Contains("no packets either way for 0.3 s", end.Reason, StringComparison.Ordinal);
        Assert.Equal(-1, await flow.ReceiveAsync(new byte[UdpFlowFraming.MaxPayloadLength], Token));
        Assert.False(await flow.SendAsync("late"u8.ToArray(), Token));
        await opened.Served.WaitAsync(FlowTestSupport.Bound, Token);
    }

    [Fact]
    public async Task Cancelling_the_flow_revokes_it_at_once_and_tells_the_client()
    {
        await using var echo = new UdpEchoServer();
        using var revoke = new CancellationTokenSource();
        var opened = await OpenAsync(new FlowHandler(Resolver), "127.0.0.1", echo.Port, revoke.Token);
        await using var flow = opened.Flow!;
        Assert.True(await flow.SendAsync("ping"u8.ToArray(), Token));
        Assert.Equal("ping"u8.ToArray(), await ReceiveAsync(flow));

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await revoke.CancelAsync();
        var end = await flow.Ended.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the flow ended {clock.ElapsedMilliseconds} ms after the revocation");
        Assert.Equal(FlowStatus.Denied, end.Status);
        Assert.Contains("revoked", end.Reason, StringComparison.Ordinal);
        await opened.Served.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, opened.ConnectorMux.Count);
    }

    [Fact]
    public async Task Closing_the_flow_on_the_client_ends_it_on_the_connector()
    {
        await using var echo = new UdpEchoServer();
        var opened = await OpenAsync(new FlowHandler(Resolver), "127.0.0.1", echo.Port, Token);
        var flow = opened.Flow!;
        Assert.True(await flow.SendAsync("ping"u8.ToArray(), Token));
        Assert.Equal("ping"u8.ToArray(), await ReceiveAsync(flow));
        await flow.DisposeAsync();
        await opened.Served.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, opened.ConnectorMux.Count);

        // Datagrams that arrive for the flow after it ended are dropped and counted.
        var late = new byte[UdpFlowFraming.DatagramLength(StreamId / 4, 4)];
        UdpFlowFraming.EncodeDatagram(late, StreamId / 4, "late"u8);
        opened.ConnectorMux.Deliver(late);
        Assert.Equal(1, opened.ConnectorMux.UnknownDropped);
    }

    [Fact]
    public async Task Many_concurrent_flows_keep_their_payloads_apart()
    {
        await using var echo = new UdpEchoServer();
        var handler = new FlowHandler(Resolver);
        var (clientMux, connectorMux) = InMemoryDatagrams.CreatePair();
        var flows = Enumerable.Range(0, 50).Select(i => Task.Run(async () =>
        {
            var id = 4L * i;
            var (near, far) = DuplexStreams.CreatePair();
            var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, Me, Access, Token, datagrams: connectorMux, streamId: id);
            var (reply, flow) = await clientMux.OpenAsync(id, near, DuplexStreams.CompleteWrites, new FlowHeader(FlowProtocol.Udp, "127.0.0.1", echo.Port), Token);
            Assert.True(reply.IsOk, reply.ToString());
            await using (flow!)
            {
                for (var n = 0; n < 20; n++)
                {
                    var payload = FlowTestSupport.RandomBytes(16 + n, seed: (i * 100) + n);
                    // Loopback UDP may drop under load: send again (bounded) until this payload comes back.
                    var echoed = false;
                    for (var attempt = 0; attempt < 5 && !echoed; attempt++)
                    {
                        Assert.True(await flow!.SendAsync(payload, Token));
                        var buffer = new byte[UdpFlowFraming.MaxPayloadLength];
                        using var wait = CancellationTokenSource.CreateLinkedTokenSource(Token);
                        wait.CancelAfter(TimeSpan.FromSeconds(2));
                        try
                        {
                            while (!echoed)
                            {
                                var length = await flow.ReceiveAsync(buffer, wait.Token);
                                Assert.True(length >= 0);
                                echoed = buffer.AsSpan(0, length).SequenceEqual(payload);
                            }
                        }
                        catch (OperationCanceledException) when (!Token.IsCancellationRequested)
                        {
                        }
                    }
                    Assert.True(echoed, $"flow {i} payload {n} never came back");
                }
            }
            await served;
        }, Token));
        await Task.WhenAll(flows).WaitAsync(TimeSpan.FromSeconds(50), Token);
        Assert.Equal(0, connectorMux.Count);
    }
}
