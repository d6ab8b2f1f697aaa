using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Ferry.Client;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.IntegrationTests.Infrastructure;
using Ferry.Paths;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.IntegrationTests;

/// <summary>Issue 5: one QUIC connection to a real connector through a real relay, one stream per flow, bytes checked end to end.</summary>
public sealed class DataPlaneTests
{
    [Fact]
    public async Task Flows_reach_a_private_service_through_relay_and_connector_and_refusals_carry_their_reason()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var setup = await Setup.StartAsync(controller, echo, ct);
        var (opener, grant) = (setup.Opener, setup.Grant);

        // Several flows over the one connection, each its own stream, with half-close: the echo closes after we do.
        var flows = Enumerable.Range(0, 8).Select(i => EchoFlowAsync(opener, grant, echo.Port, (i + 1) * 256 * 1024, ct));
        await Task.WhenAll(flows);
        Assert.Single(opener.ConnectedTo);
        Assert.Equal(8, echo.Carried);

        // Refusals come from the connector, with their reason, even though this client asks anyway.
        var wrongPort = await opener.OpenAsync(grant, new FlowHeader(FlowProtocol.Tcp, "127.0.0.1", echo.Port + 1), early: null, ct);
        Assert.Equal(FlowStatus.Denied, wrongPort.Reply.Status);
        var notAResource = await opener.OpenAsync(grant, new FlowHeader(FlowProtocol.Tcp, "10.255.255.1", 80), early: null, ct);
        Assert.Equal(FlowStatus.NoSuchResource, notAResource.Reply.Status);
        Assert.False(string.IsNullOrEmpty(notAResource.Reply.Message));
    }

    [Fact]
    public async Task A_thousand_concurrent_flows_through_one_connector_arrive_intact()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var setup = await Setup.StartAsync(controller, echo, ct);
        // One QUIC connection, 1000 streams at once, each its own flow to the service with its own checked payload.
        await Task.WhenAll(Enumerable.Range(0, 1000).Select(_ => EchoFlowAsync(setup.Opener, setup.Grant, echo.Port, 16 * 1024, ct)));
        Assert.Equal(1000, echo.Carried);
        Assert.Single(setup.Opener.ConnectedTo);
    }

    [Fact]
    public async Task New_clients_still_connect_after_the_connector_renewed_its_certificate()
    {
        var ct = TestContext.Current.CancellationToken;
        // 30 s certificates: the connector renews with 10 s left, so by 25 s it serves with its second certificate.
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, "--certificate-lifetime", "30");
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var setup = await Setup.StartAsync(controller, echo, ct);
        await EchoFlowAsync(setup.Opener, setup.Grant, echo.Port, 64 * 1024, ct);
        await setup.Connector.WaitForLineAsync(l => l.Contains("Certificate received", StringComparison.Ordinal) && setup.Connector.Output.Split("Certificate received").Length > 2,
            TimeSpan.FromSeconds(40), "a renewed certificate");

        // A fresh client (new connection, new handshake) is served with the renewed certificate.
        await using var second = await Setup.ClientAsync(controller, setup.Key, ct);
        await EchoFlowAsync(second.Opener, second.Grant, echo.Port, 64 * 1024, ct);
    }

    private static async Task EchoFlowAsync(QuicFlowOpener opener, ResourceGrant grant, int port, int size, CancellationToken ct)
    {
        await using var flow = await opener.OpenAsync(grant, new FlowHeader(FlowProtocol.Tcp, "127.0.0.1", port), early: null, ct);
        Assert.True(flow.Reply.IsOk, flow.Reply.Message);
        var payload = RandomNumberGenerator.GetBytes(size);
        var send = Task.Run(async () =>
        {
            await flow.Stream!.WriteAsync(payload, ct);
            await flow.CompleteWrites!(flow.Stream);
        }, ct);
        using var received = new MemoryStream();
        await flow.Stream!.CopyToAsync(received, ct).WaitAsync(TimeSpan.FromSeconds(60), ct);
        await send;
        Assert.Equal(SHA256.HashData(payload), SHA256.HashData(received.ToArray()));
    }

    /// <summary>Relay and connector processes around a controller, and a client data plane in this process.</summary>
    private sealed class Setup : IAsyncDisposable
    {
        public required TestDeployment Deployment { get; init; }
        public required TestClient Client { get; init; }
        public FerryProcess Connector => Deployment.Connector;
        public string Key => Deployment.ServiceAccountKey;
        public QuicFlowOpener Opener => Client.Opener;
        public ResourceGrant Grant => Client.Grant;

        public static async Task<Setup> StartAsync(ControllerInstance controller, EchoServer echo, CancellationToken ct)
        {
            var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);
            return new Setup { Deployment = deployment, Client = await ClientAsync(controller, deployment.ServiceAccountKey, ct) };
        }

        public static async Task<TestClient> ClientAsync(ControllerInstance controller, string key, CancellationToken ct)
        {

            ResourcesMessage? resources = null;
            RelaysMessage? relays = null;
            var device = await TestPeers.DeviceAsync(controller, key, ct, message =>
            {
                if (message is ResourcesMessage r)
                {
                    resources = r;
                }
                if (message is RelaysMessage { Relays.Length: > 0 } l)
                {
                    relays = l;
                }
                return Task.CompletedTask;
            });
            var certificate = await TestPeers.WaitForAsync(() => device.Session.Certificate, "device certificate");
            await TestPeers.WaitForAsync(() => resources?.Connectors?.FirstOrDefault()?.Connectors.Length > 0 ? resources : null, "an online connector");
            await TestPeers.WaitForAsync(() => relays, "relay list");
            var ca = X509Certificate2.CreateFromPem(device.Session.CaPem!);
            var plane = DataPlaneEndpoint.Create(new IPEndPoint(IPAddress.Loopback, 0), certificate, ca, acceptConnections: false, NullLogger.Instance);
            await plane.UpdateRelaysAsync(relays!.Relays, ct);
            var opener = new QuicFlowOpener(() => device.Session, _ => Task.FromResult(plane), new Ferry.Client.Routing.ConnectorSelector(device.Session.Identity!, null, TimeProvider.System), NullLogger.Instance);
            opener.UpdateConnectors(resources!.Connectors!);
            return new TestClient(plane, opener, Assert.Single(resources.Resources));
        }

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync();
            await Deployment.DisposeAsync();
        }
    }

    /// <summary>A client data plane and opener held by the test.</summary>
    private sealed record TestClient(DataPlaneEndpoint Plane, QuicFlowOpener Opener, ResourceGrant Grant) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Opener.DisposeAsync();
            await Plane.DisposeAsync();
        }
    }
}
