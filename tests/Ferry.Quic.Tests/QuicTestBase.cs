using System.Net;

namespace Ferry.Quic.Tests;

/// <summary>Two endpoints on 127.0.0.1 with certificates from one test CA.</summary>
public abstract class QuicTestBase : IAsyncLifetime
{
    protected static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private readonly List<IAsyncDisposable> _disposables = [];

    internal TestPki Pki { get; } = new();

    protected QuicEndpoint Server { get; private set; } = null!;

    protected QuicEndpoint Client { get; private set; } = null!;

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    public virtual ValueTask InitializeAsync()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        Server = Track(QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = Pki.Issue("server.ferry"), TrustedCa = Pki.Ca },
        }));
        Client = Track(QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) }));
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        for (int i = _disposables.Count - 1; i >= 0; i--)
        {
            await _disposables[i].DisposeAsync().AsTask().WaitAsync(Timeout, Ct);
        }

        Pki.Dispose();
        GC.SuppressFinalize(this);
    }

    protected T Track<T>(T disposable)
        where T : IAsyncDisposable
    {
        lock (_disposables)
        {
            _disposables.Add(disposable);
        }

        return disposable;
    }

    protected QuicTlsOptions ClientTls(string commonName = "client.ferry") => new() { Certificate = Pki.Issue(commonName), TrustedCa = Pki.Ca };

    protected async Task<(QuicConnection Client, QuicConnection Server)> ConnectAsync(QuicTlsOptions? tls = null, QuicConnectionOptions? options = null)
    {
        var accept = Server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(Server.LocalEndPoint, tls ?? ClientTls(), options, Ct).AsTask().WaitAsync(Timeout, Ct));
        var server = Track(await accept.WaitAsync(Timeout, Ct));
        return (client, server);
    }
}
