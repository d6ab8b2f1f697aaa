using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Relay.Tests.Support;

/// <summary>A deployment in one process: a CA, relays on 127.0.0.1 port 0, and peers with their certificates and tickets.</summary>
internal sealed class RelayHarness : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, X509Certificate2> _certificates = new(StringComparer.Ordinal);
    private readonly ConcurrentStack<IAsyncDisposable> _owned = new();

    public TestPki Pki { get; } = TestPki.Create();

    public static RelayEndpoint EndpointOf(RelayServer relay) => new("127.0.0.1", relay.BoundEndpoints[0].Port);

    public X509Certificate2 CertificateFor(string identity) =>
        _certificates.GetOrAdd(identity, id => Pki.Issue(id, relay: id.StartsWith("relay/", StringComparison.Ordinal)));

    public async Task<RelayServer> StartRelayAsync(
        string identity,
        TimeProvider? clock = null,
        TimeSpan? idleTimeout = null,
        int queueCapacity = 512,
        TimeSpan? queueFullWait = null,
        int maxBindings = 4096)
    {
        var relay = new RelayServer(
            new RelayServerOptions
            {
                Endpoints = [new IPEndPoint(IPAddress.Loopback, 0)],
                ServerCertificate = CertificateFor(identity),
                CaCertificate = Pki.Ca,
                TimeProvider = clock ?? TimeProvider.System,
                IdleTimeout = idleTimeout ?? TimeSpan.FromSeconds(60),
                OutboundQueueCapacity = queueCapacity,
                QueueFullWait = queueFullWait ?? TimeSpan.FromMilliseconds(5),
                MaxBindingsPerLink = maxBindings,
            },
            new TestLogger<RelayServer>(identity));
        await relay.StartAsync(Bounded.Ct).Within();
        _owned.Push(relay);
        return relay;
    }

    public RelayLinkOptions LinkOptions(string identity, TimeProvider? clock = null, X509Certificate2? certificate = null, TimeSpan? keepalive = null, TimeSpan? idle = null) => new()
    {
        ClientCertificate = certificate ?? CertificateFor(identity),
        CaCertificate = Pki.Ca,
        TimeProvider = clock ?? TimeProvider.System,
        KeepaliveInterval = keepalive ?? TimeSpan.FromSeconds(15),
        IdleTimeout = idle ?? TimeSpan.FromSeconds(45),
    };

    public async Task<RelayLink> LinkAsync(RelayServer relay, string identity, RelayLinkOptions? options = null)
    {
        var link = await RelayLink.ConnectAsync(EndpointOf(relay), options ?? LinkOptions(identity), new TestLogger<RelayLink>(identity), Bounded.Ct).Within();
        _owned.Push(link);
        return link;
    }

    public async Task<RelayPool> PoolAsync(string identity, params RelayServer[] relays)
    {
        var pool = new RelayPool(
            new RelayPoolOptions
            {
                Relays = [.. relays.Select(EndpointOf)],
                Link = LinkOptions(identity),
                ReconnectDelay = TimeSpan.FromMilliseconds(100),
                MaxReconnectDelay = TimeSpan.FromSeconds(1),
            },
            new TestLogger<RelayPool>(identity));
        _owned.Push(pool);
        await pool.StartAsync(Bounded.Ct).Within();
        return pool;
    }

    public T Own<T>(T disposable)
        where T : IAsyncDisposable
    {
        _owned.Push(disposable);
        return disposable;
    }

    public string Ticket(string a, string b, TimeSpan? lifetime = null) =>
        RelayTicket.Issue(Pki.CaKey, a, b, DateTimeOffset.UtcNow + (lifetime ?? TimeSpan.FromMinutes(5))).Text;

    public async ValueTask DisposeAsync()
    {
        while (_owned.TryPop(out var item))
        {
            try
            {
                await item.DisposeAsync().AsTask().WaitAsync(Bounded.Timeout);
            }
            catch (ObjectDisposedException)
            {
                // Tests dispose some relays themselves (failover).
            }
        }

        foreach (var certificate in _certificates.Values)
        {
            certificate.Dispose();
        }

        Pki.Dispose();
    }
}
