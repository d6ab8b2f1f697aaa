using System.Diagnostics;
using System.Net;
using Ferry.Client.Access;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

public sealed class FlowHandlerTests : FlowTestBase
{
    private const string Me = "device/dv_me";

    private static readonly AccessTable Access = new(
    [
        new(Me, new ResourceGrant("rs_lo", "loopback", "nw_1", "127.0.0.1", "all", "all")),
    ]);

    private async Task<(FlowReply Reply, DuplexStream Stream, Task Served)> OpenAsync(FlowHandler handler, byte[] header, CancellationToken revoke)
    {
        var (near, far) = DuplexStreams.CreatePair();
        var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, Me, Access, revoke);
        await near.WriteAsync(header, Token);
        var reply = await FlowReply.ReadAsync(near, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        return (reply, near, served);
    }

    [Fact]
    public async Task Udp_flows_are_a_protocol_error_on_a_stream()
    {
        var (reply, stream, served) = await OpenAsync(new FlowHandler(), new FlowHeader(FlowProtocol.Udp, "127.0.0.1", 53).ToArray(), Token);
        Assert.Equal(FlowStatus.ProtocolError, reply.Status);
        Assert.Contains("UDP flows ride datagrams", reply.Message, StringComparison.Ordinal);
        await served.WaitAsync(FlowTestSupport.Bound, Token);
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task A_malformed_header_is_answered_with_the_reason_and_closed()
    {
        var (reply, stream, served) = await OpenAsync(new FlowHandler(), [7, 1, 1, (byte)'a', 0, 80], Token);
        Assert.Equal(FlowStatus.ProtocolError, reply.Status);
        Assert.Contains("version 7 is not supported", reply.Message, StringComparison.Ordinal);
        await served.WaitAsync(FlowTestSupport.Bound, Token);
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task A_stalled_header_times_out()
    {
        var handler = new FlowHandler(options: new FlowHandlerOptions { HeaderTimeout = TimeSpan.FromMilliseconds(200) });
        var (reply, stream, served) = await OpenAsync(handler, [1, 1], Token);
        Assert.Equal(FlowStatus.ProtocolError, reply.Status);
        Assert.Contains("within 0.2 s", reply.Message, StringComparison.Ordinal);
        await served.WaitAsync(FlowTestSupport.Bound, Token);
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task A_name_resolving_to_loopback_under_a_wildcard_is_refused()
    {
        var access = new AccessTable([new(Me, new ResourceGrant("rs_w", "apps", "nw_1", "*.corp.internal", "all", "none"))]);
        var handler = new FlowHandler(new StubResolver((_, _) => Task.FromResult(NameResolution.Found([IPAddress.Loopback]))));
        var (near, far) = DuplexStreams.CreatePair();
        var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, Me, access, Token);
        await new FlowHeader(FlowProtocol.Tcp, "rebind.corp.internal", 22).WriteAsync(near, Token);
        var reply = await FlowReply.ReadAsync(near, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(FlowStatus.Denied, reply.Status);
        Assert.Contains("resolved to 127.0.0.1, which is a loopback address", reply.Message, StringComparison.Ordinal);
        await served.WaitAsync(FlowTestSupport.Bound, Token);
        await near.DisposeAsync();
    }

    [Fact]
    public async Task The_system_resolver_reports_unknown_names_as_NameNotFound()
    {
        var resolution = await SystemNameResolver.Instance.ResolveAsync("no-such-host.invalid", Token).WaitAsync(TimeSpan.FromSeconds(15), Token);
        Assert.Contains(resolution.Status, new[] { FlowStatus.NameNotFound, FlowStatus.Unreachable });
        Assert.Contains("no-such-host.invalid", resolution.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_thousand_concurrent_flows_through_one_handler_arrive_intact()
    {
        const int Flows = 1000;
        const int Size = 16 * 1024;
        await using var echo = LoopbackServer.Echo();
        var handler = new FlowHandler();
        var clock = Stopwatch.StartNew();

        var flows = Enumerable.Range(0, Flows).Select(i => Task.Run(async () =>
        {
            var (near, far) = DuplexStreams.CreatePair();
            var served = handler.HandleAsync(far, DuplexStreams.CompleteWrites, Me, Access, Token);
            await using (near)
            {
                await new FlowHeader(FlowProtocol.Tcp, "127.0.0.1", echo.Port).WriteAsync(near, Token);
                var reply = await FlowReply.ReadAsync(near, Token);
                Assert.True(reply.IsOk, reply.ToString());
                var payload = FlowTestSupport.RandomBytes(Size, seed: i);
                var echoed = await FlowTestSupport.ExchangeAsync(near, DuplexStreams.CompleteWrites, payload, Token);
                Assert.Equal(payload, echoed);
            }
            await served;
        }, Token));
        await Task.WhenAll(flows).WaitAsync(TimeSpan.FromSeconds(60), Token);

        TestContext.Current.TestOutputHelper?.WriteLine($"{Flows} flows of {Size} bytes each way in {clock.ElapsedMilliseconds} ms");
    }

    [Fact]
    public async Task The_copier_carries_half_close_both_ways_and_counts_bytes()
    {
        var (app, clientSide) = DuplexStreams.CreatePair();
        var (upstreamSide, server) = DuplexStreams.CreatePair();
        var copy = FlowCopier.CopyAsync(clientSide, DuplexStreams.CompleteWrites, upstreamSide, DuplexStreams.CompleteWrites, Token);

        await app.WriteAsync("request"u8.ToArray(), Token);
        app.CompleteWrites();
        Assert.Equal("request"u8.ToArray(), await FlowTestSupport.ReadToEndAsync(server, Token));
        await server.WriteAsync("a late answer"u8.ToArray(), Token);
        server.CompleteWrites();
        Assert.Equal("a late answer"u8.ToArray(), await FlowTestSupport.ReadToEndAsync(app, Token));

        var result = await copy.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(new FlowCopyResult(FlowCopyError.None, 7, 13, null), result);
    }

    [Fact]
    public async Task The_copier_reports_which_side_failed_and_closes_both()
    {
        var (app, clientSide) = DuplexStreams.CreatePair();
        var (upstreamSide, server) = DuplexStreams.CreatePair();
        var copy = FlowCopier.CopyAsync(clientSide, DuplexStreams.CompleteWrites, upstreamSide, DuplexStreams.CompleteWrites, Token);

        await server.WriteAsync("x"u8.ToArray(), Token);
        var one = new byte[1];
        await app.ReadExactlyAsync(one, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        await server.DisposeAsync(); // an abort, like a QUIC stream reset

        var result = await copy.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(FlowCopyError.UpstreamRead, result.Error);
        Assert.Equal(1, result.BytesToClient);
        await Assert.ThrowsAsync<IOException>(() => FlowTestSupport.ReadToEndAsync(app, Token));
    }

    [Fact]
    public async Task The_copier_stops_on_cancellation()
    {
        var (app, clientSide) = DuplexStreams.CreatePair();
        var (upstreamSide, server) = DuplexStreams.CreatePair();
        using var revoke = new CancellationTokenSource();
        var copy = FlowCopier.CopyAsync(clientSide, DuplexStreams.CompleteWrites, upstreamSide, DuplexStreams.CompleteWrites, revoke.Token);
        await revoke.CancelAsync();
        var result = await copy.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(FlowCopyError.Canceled, result.Error);
        await Assert.ThrowsAsync<IOException>(() => FlowTestSupport.ReadToEndAsync(server, Token));
        await app.DisposeAsync();
    }

    [Fact]
    public void Client_routes_refuse_or_go_direct_and_follow_updates()
    {
        var db = new ResourceGrant("rs_db", "db", "nw_1", "db.corp.internal", "5432", "none");
        var routes = new ClientRoutes([db]);
        Assert.Equal(RouteKind.Ferry, routes.Match("db.corp.internal", 5432, FlowProtocol.Tcp).Kind);
        var port = routes.Match("db.corp.internal", 22, FlowProtocol.Tcp);
        Assert.Equal(RouteKind.Refused, port.Kind);
        Assert.Equal(FlowStatus.Denied, port.Status);
        var elsewhere = routes.Match("example.com", 443, FlowProtocol.Tcp);
        Assert.Equal(RouteKind.Refused, elsewhere.Kind);
        Assert.Contains("split tunnelling is off", elsewhere.Reason, StringComparison.Ordinal);

        routes.SplitTunnel = true;
        Assert.Equal(RouteKind.Direct, routes.Match("example.com", 443, FlowProtocol.Tcp).Kind);
        // A covered destination on a port it does not allow stays refused: it must not leak out directly.
        Assert.Equal(RouteKind.Refused, routes.Match("db.corp.internal", 22, FlowProtocol.Tcp).Kind);

        routes.Update([]);
        Assert.Equal(RouteKind.Direct, routes.Match("db.corp.internal", 5432, FlowProtocol.Tcp).Kind);
    }
}
