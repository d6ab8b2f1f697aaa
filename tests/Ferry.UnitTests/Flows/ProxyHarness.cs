using System.Net;
using System.Net.Sockets;
using Ferry.Client.Access;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

/// <summary>
/// A client's local proxies wired to a real <see cref="FlowHandler"/> through in-memory streams, in front of real loopback servers.
/// Names under ".test" resolve (through a stub) to 127.0.0.1, except "missing.test" (NXDOMAIN), "dns-down.test" (no DNS server)
/// and "slow.test" (never answers).
/// </summary>
internal sealed class ProxyHarness : IAsyncDisposable
{
    public const string Me = "device/dv_me";
    public const string Someone = "device/dv_someone";

    private ProxyHarness()
    {
    }

    public LoopbackServer Echo { get; private set; } = null!;

    public LoopbackServer Hash { get; private set; } = null!;

    public LoopbackServer Web { get; private set; } = null!;

    /// <summary>An echo server on ::1, or null when this host has no IPv6 loopback.</summary>
    public LoopbackServer? EchoV6 { get; private set; }

    public int ClosedPort { get; private set; }

    public AccessTable Access { get; set; } = AccessTable.Empty;

    public ClientRoutes Routes { get; private set; } = null!;

    public InMemoryOpener Opener { get; private set; } = null!;

    public Socks5Server Socks { get; private set; } = null!;

    public HttpConnectProxy HttpProxy { get; private set; } = null!;

    public static readonly ResourceGrant Loopback = new("rs_lo", "loopback", "nw_1", "127.0.0.1", "all", "none");
    public static readonly ResourceGrant LoopbackV6 = new("rs_lo6", "loopback6", "nw_1", "::1", "all", "none");
    public static readonly ResourceGrant Apps = new("rs_apps", "apps", "nw_1", "*.test", "all", "none");
    public static readonly ResourceGrant Secret = new("rs_secret", "secret", "nw_1", "secret.test", "all", "none");
    public static readonly ResourceGrant Narrow = new("rs_narrow", "narrow", "nw_1", "narrow.test", "1", "none");
    // Granted in the client's view, gone from the connector's: what a revocation in flight looks like.
    public static readonly ResourceGrant Gone = new("rs_gone", "gone", "nw_1", "gone.example", "all", "none");

    public static async Task<ProxyHarness> StartAsync(CancellationToken cancellationToken, TimeSpan? connectTimeout = null)
    {
        var harness = new ProxyHarness
        {
            Echo = LoopbackServer.Echo(),
            Hash = LoopbackServer.HashAfterEnd(),
            Web = LoopbackServer.Http("hello through ferry"),
            ClosedPort = FlowTestSupport.ClosedPort(),
        };
        try
        {
            harness.EchoV6 = LoopbackServer.Echo(IPAddress.IPv6Loopback);
        }
        catch (SocketException)
        {
            harness.EchoV6 = null;
        }
        harness.Access = new AccessTable(
        [
            new(Me, Loopback), new(Me, LoopbackV6), new(Me, Apps), new(Me, Narrow), new(Someone, Secret),
        ]);
        harness.Routes = new ClientRoutes([Loopback, LoopbackV6, Apps, Secret, Narrow, Gone]);
        var resolver = new StubResolver(async (name, ct) =>
        {
            switch (name)
            {
                case "missing.test":
                    return NameResolution.Failed(FlowStatus.NameNotFound, "DNS server 10.0.0.2:53 says 'missing.test' does not exist (NXDOMAIN)");
                case "dns-down.test":
                    return NameResolution.Failed(FlowStatus.Unreachable, "DNS server 10.0.0.2:53 could not be asked about 'dns-down.test'");
                case "slow.test":
                    await Task.Delay(Timeout.Infinite, ct);
                    throw new InvalidOperationException("unreachable");
                default:
                    return NameResolution.Found([IPAddress.Loopback]);
            }
        });
        var handler = new FlowHandler(resolver, new FlowHandlerOptions { ConnectTimeout = connectTimeout ?? TimeSpan.FromMilliseconds(500) });
        harness.Opener = new InMemoryOpener(handler, Me, () => harness.Access);
        harness.Socks = new Socks5Server(harness.Routes, harness.Opener);
        harness.HttpProxy = new HttpConnectProxy(harness.Routes, harness.Opener);
        await harness.Socks.StartAsync(cancellationToken);
        await harness.HttpProxy.StartAsync(cancellationToken);
        return harness;
    }

    public async ValueTask DisposeAsync()
    {
        await Socks.DisposeAsync();
        await HttpProxy.DisposeAsync();
        await Opener.DisposeAsync();
        await Echo.DisposeAsync();
        await Hash.DisposeAsync();
        await Web.DisposeAsync();
        if (EchoV6 is not null)
        {
            await EchoV6.DisposeAsync();
        }
    }
}
