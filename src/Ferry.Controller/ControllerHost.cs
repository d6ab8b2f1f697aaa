using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Ferry.Controller.Api;
using Ferry.Controller.Console;
using Ferry.Controller.Edge;
using Ferry.Controller.CertificateAuthority;
using Ferry.Controller.Policy;
using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.Files;
using Ferry.Core.Operations;
using Ferry.Core.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller;

/// <summary>Starts a controller: opens its database, loads or creates the CA, admin key and TLS certificate, and serves HTTPS until stopped.</summary>
public static class ControllerHost
{
    /// <summary>Runs until <paramref name="ct"/> is cancelled or the process is told to stop; returns the exit code.</summary>
    public static async Task<int> RunAsync(ControllerOptions options, TextWriter output, CancellationToken ct)
    {
        if (options.Role == ControllerRole.Edge)
        {
            return await RunEdgeAsync(options, output, ct);
        }
        var core = options.Role == ControllerRole.Core;
        IPEndPoint listen;
        if (core)
        {
            listen = new IPEndPoint(IPAddress.Any, 0);
        }
        else if (!TryParseListen(options.Listen, out listen))
        {
            throw new ArgumentException($"--listen '{options.Listen}' is not HOST:PORT (for example 127.0.0.1:8443 or 0.0.0.0:443)");
        }
        if (options.HeartbeatInterval <= TimeSpan.Zero || options.HeartbeatInterval > TimeSpan.FromSeconds(5))
        {
            throw new ArgumentException("--heartbeat-interval must be more than 0 and at most 5 seconds, so a stopped daemon shows offline within 15 s");
        }
        EdgeLinkEndPoint? edges = null;
        byte[]? edgeSecret = null;
        if (core)
        {
            edges = new EdgeLinkEndPoint(ParseEdges(options.Edges));
            edgeSecret = EdgeLinkProtocol.LoadSecret(options.EdgeSecretFile);
            if (string.IsNullOrWhiteSpace(options.PublicUrl))
            {
                throw new ArgumentException("--role core needs --public-url: the URL (or several, separated by commas) daemons use to reach its edges, for example https://edge1.example.com:443,https://edge2.example.com:443");
            }
        }
        var trustedProxies = new List<IPAddress>();
        foreach (var proxy in options.TrustedProxies)
        {
            trustedProxies.Add(IPAddress.TryParse(proxy, out var ip) ? ip : throw new ArgumentException($"--trusted-proxy '{proxy}' is not an IP address"));
        }

        Directory.CreateDirectory(options.DataDirectory);
        await using var database = Database.Create(options.DataDirectory, options.Database);
        try
        {
            await database.MigrateAsync(ct);
        }
        catch (Exception e) when (e is System.Data.Common.DbException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new ArgumentException($"cannot open the database ({database.Description}): {e.Message}", e);
        }
        var store = new ControllerStore(database);
        var time = TimeProvider.System;
        using var ca = await DeploymentCertificateAuthority.LoadOrCreateAsync(store, time, ct);
        var (adminKey, adminKeyText) = await AdminKey.LoadOrCreateAsync(store, options.DataDirectory, ct);
        using var tls = await LoadOrCreateTlsCertificateAsync(options, listen, store, ct);
        var fingerprint = CertificateFingerprint.Of(tls);

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
            o.UseUtcTimestamp = true;
        });
        builder.Logging.SetMinimumLevel(LogLevel.Information);
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        // "Keys persisted unencrypted" is by design: they sit in the data folder, owner-only, like admin.key.
        builder.Logging.AddFilter("Microsoft.AspNetCore.DataProtection.KeyManagement.XmlKeyManager", LogLevel.Error);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = 1 << 20;
            if (edges is not null)
            {
                kestrel.Listen(edges, l => l.UseHttps(tls));
            }
            else
            {
                kestrel.Listen(listen, l => l.UseHttps(tls));
            }
        });
        var info = new ControllerInfo { Fingerprint = fingerprint };
        if (edgeSecret is not null)
        {
            // Registered after Kestrel's socket transport, so Kestrel asks it first; it binds only the edges' end point.
            builder.Services.AddSingleton<Microsoft.AspNetCore.Connections.IConnectionListenerFactory>(sp => new EdgeLinkTransport(edgeSecret, sp.GetRequiredService<ILoggerFactory>()));
        }
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(time);
        builder.Services.AddSingleton(store);
        builder.Services.AddSingleton(ca);
        builder.Services.AddSingleton(adminKey);
        builder.Services.AddSingleton(info);
        builder.Services.AddSingleton<TokenService>();
        builder.Services.AddSingleton<PolicyEvaluator>();
        builder.Services.AddSingleton<ReplicaBus>(sp => database.Kind == DatabaseKind.Postgres
            ? new PostgresReplicaBus(database, options.ReplicaId, sp.GetRequiredService<ILogger<PostgresReplicaBus>>())
            : new ReplicaBus());
        builder.Services.AddSingleton<SessionRegistry>();
        builder.Services.AddHostedService<StaleSessionReaper>();
        builder.Services.AddSingleton<SessionHandler>();
        builder.Services.AddSingleton<RelayDirectory>();
        builder.Services.AddSingleton<ConnectorDirectory>();
        builder.Services.AddSingleton<TicketService>();
        builder.Services.AddSingleton<MfaSessions>();
        builder.Services.AddHostedService(services => services.GetRequiredService<MfaSessions>());
        builder.Services.AddSingleton<Security.SecurityEvents>();
        builder.Services.AddSingleton<Security.SignInThrottle>();
        builder.Services.AddSingleton(database);
        builder.Services.AddHealthChecks().AddCheck<DatabaseHealthCheck>("database", tags: [OpsServer.ReadyTag]);
        builder.Services.AddConsole(options, Path.GetFullPath(options.DataDirectory));
        builder.Services.AddProblemDetails();
        // Unreadable bodies throw, so ProblemMiddleware answers them with problem+json like every other refusal.
        builder.Services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        builder.Services.AddOpenApi(o => o.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "Ferry controller admin API";
            document.Info.Description = "Remote networks, connectors, resources, users, groups, service accounts and policies. Authenticate with 'Authorization: Bearer <admin API key>'.";
            return Task.CompletedTask;
        }));

        var app = builder.Build();
        app.UseMiddleware<ProblemMiddleware>();
        if (trustedProxies.Count > 0)
        {
            var forwarded = new ForwardedHeadersOptions { ForwardedHeaders = ForwardedHeaders.XForwardedFor };
            // Only the named proxies; by default ASP.NET trusts loopback, which would let any local process claim any address.
            forwarded.KnownProxies.Clear();
            forwarded.KnownIPNetworks.Clear();
            foreach (var proxy in trustedProxies)
            {
                forwarded.KnownProxies.Add(proxy);
            }
            app.UseForwardedHeaders(forwarded);
        }
        app.UseWebSockets();
        app.UseMiddleware<AdminAuthenticationMiddleware>();
        app.UseAuthentication();
        app.UseAuthorization();
        app.UseAntiforgery();
        OpsServer.MapHealthEndpoints(app);
        app.MapOpenApi("/openapi/{documentName}.json");
        app.MapAdminApi();
        app.MapConsole();
        app.MapRelayApi();
        app.MapDaemonApi();
        app.MapDeviceMfaApi();
        app.Map("/v1/session", (HttpContext context, SessionHandler handler) => handler.HandleAsync(context));

        await StartReplicaBusAsync(app.Services.GetRequiredService<ReplicaBus>(), database, ct);
        await store.ReleaseSessionsOfReplicaAsync(options.ReplicaId, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
        await app.StartAsync(ct);
        // Metrics go on their own plain-HTTP listener, never on the public one: the operator decides who may scrape.
        await using var ops = options.MetricsListen is null ? null
            : await OpsServer.StartAsync(OpsServer.ParseListen(options.MetricsListen), [ControllerMetrics.MeterName], new DatabaseHealthCheck(database),
                app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Ferry.Controller"), ct);

        if (core)
        {
            info.Url = string.Join(",", options.PublicUrl!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(u => u.TrimEnd('/')));
        }
        else
        {
            var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            var port = new Uri(bound).Port;
            info.Url = options.PublicUrl?.TrimEnd('/') ?? $"https://{DisplayHost(listen.Address)}:{port}";
        }
        var dataDirectory = Path.GetFullPath(options.DataDirectory);
        AtomicFile.WriteAllText(Path.Combine(dataDirectory, "controller.json"),
            JsonSerializer.Serialize(new { url = info.Url, fingerprint, adminKeyFile = Path.Combine(dataDirectory, "admin.key") }), ownerOnly: false);

        output.WriteLine($"Ferry controller {typeof(ControllerHost).Assembly.GetName().Version?.ToString(3)}");
        output.WriteLine($"  admin URL:        {info.Url.Split(',')[0]}/");
        if (edges is not null)
        {
            output.WriteLine($"  role:             core, listening on nothing; dialing {edges}");
        }
        output.WriteLine(adminKeyText is not null
            ? $"  admin API key:    {adminKeyText}   (also in {Path.Combine(dataDirectory, "admin.key")}, mode 0600)"
            : "  admin API key:    set earlier by another controller replica; use that replica's admin.key");
        output.WriteLine($"  TLS fingerprint:  {fingerprint}");
        output.WriteLine($"  state:            {database.Description}");
        output.Flush();
        Log.Listening(app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Ferry.Controller"), info.Url, database.Description);

        try
        {
            await app.WaitForShutdownAsync(ct);
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
        }
        return 0;
    }

    /// <summary>The edge role: binds the public and link listeners and passes connections until stopped.</summary>
    private static async Task<int> RunEdgeAsync(ControllerOptions options, TextWriter output, CancellationToken ct)
    {
        if (!TryParseListen(options.Listen, out var listen))
        {
            throw new ArgumentException($"--listen '{options.Listen}' is not HOST:PORT (for example 0.0.0.0:443): where daemons and operators connect");
        }
        if (options.LinkListen is null || !TryParseListen(options.LinkListen, out var linkListen))
        {
            throw new ArgumentException($"--role edge needs --link-listen HOST:PORT (for example 10.0.0.5:8444): where the core's links connect{(options.LinkListen is null ? "" : $"; '{options.LinkListen}' is not one")}");
        }
        if (options.Database is not null)
        {
            throw new ArgumentException("--role edge holds no database: give --database to the core");
        }
        var secret = EdgeLinkProtocol.LoadSecret(options.EdgeSecretFile);
        using var loggers = LoggerFactory.Create(b => b.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
            o.UseUtcTimestamp = true;
        }));
        await using var edge = EdgeServer.Bind(listen, linkListen, secret, loggers.CreateLogger<EdgeServer>());
        output.WriteLine($"Ferry controller edge {typeof(ControllerHost).Assembly.GetName().Version?.ToString(3)}");
        output.WriteLine($"  daemons and operators:  {edge.PublicEndPoint}");
        output.WriteLine($"  core links:             {edge.LinkEndPoint}");
        output.Flush();
        // Ready while the core has a link here: without one, daemons' connections are closed after a wait.
        await using var ops = options.MetricsListen is null ? null
            : await OpsServer.StartAsync(OpsServer.ParseListen(options.MetricsListen), [], new DelegateReadiness(() => edge.LiveLinks > 0 ? null : "no link from the core"),
                loggers.CreateLogger("Ferry.Controller.Edge"), ct);
        await edge.RunAsync(ct);
        return 0;
    }

    private static DnsEndPoint[] ParseEdges(IList<string> edges)
    {
        if (edges.Count == 0)
        {
            throw new ArgumentException("--role core needs --edge HOST:PORT (several separated by commas): the edges' --link-listen addresses it dials out to");
        }
        return [.. edges.Select(e =>
        {
            var colon = e.LastIndexOf(':');
            return colon > 0 && int.TryParse(e[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out var port) && port is > 0 and < 65536
                ? new DnsEndPoint(e[..colon].Trim('[', ']'), port)
                : throw new ArgumentException($"--edge '{e}' is not HOST:PORT (for example edge1.internal:8444)");
        })];
    }

    internal static bool TryParseListen(string text, out IPEndPoint endpoint)
    {
        if (text.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase))
        {
            text = "127.0.0.1" + text["localhost".Length..];
        }
        return IPEndPoint.TryParse(text, out endpoint!) && text.Contains(':', StringComparison.Ordinal);
    }

    private static string DisplayHost(IPAddress address)
    {
        if (address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any))
        {
            return Environment.MachineName;
        }
        return address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
    }

    /// <summary>On PostgreSQL, joins the other replicas (and takes the lock that proves this one alive) before serving anything.</summary>
    private static async Task StartReplicaBusAsync(ReplicaBus bus, Database database, CancellationToken ct)
    {
        if (bus is not PostgresReplicaBus postgres)
        {
            return;
        }
        try
        {
            await postgres.StartAsync(ct);
        }
        catch (Exception e) when (e is System.Data.Common.DbException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new ArgumentException($"cannot listen for the other controller replicas on {database.Description}: {e.Message}", e);
        }
    }

    /// <summary>
    /// The TLS certificate: the operator's files; else, on PostgreSQL, the one every replica shares through the database (daemons
    /// pin one fingerprint, and must be able to move between replicas); else one generated into the data folder.
    /// </summary>
    private static async Task<X509Certificate2> LoadOrCreateTlsCertificateAsync(ControllerOptions options, IPEndPoint listen, ControllerStore store, CancellationToken ct)
    {
        if (store.Database.Kind != DatabaseKind.Postgres || options.TlsCertificatePath is not null || options.TlsKeyPath is not null)
        {
            return LoadOrCreateTlsCertificate(options, listen);
        }
        if (await store.GetSettingAsync(SharedTlsSetting, ct) is not { } shared)
        {
            using var local = LoadOrCreateTlsCertificate(options, listen);
            using var key = local.GetECDsaPrivateKey();
            var pair = JsonSerializer.Serialize(new SharedTls(local.ExportCertificatePem(), key!.ExportPkcs8PrivateKeyPem()));
            // Of replicas starting at once, the first to store wins and all serve its certificate.
            shared = await store.GetOrAddSettingAsync(SharedTlsSetting, pair, ct);
        }
        var stored = JsonSerializer.Deserialize<SharedTls>(shared)!;
        return X509Certificate2.CreateFromPem(stored.Certificate, stored.Key);
    }

    private const string SharedTlsSetting = "tls.generated";

    private sealed record SharedTls(string Certificate, string Key);

    private static X509Certificate2 LoadOrCreateTlsCertificate(ControllerOptions options, IPEndPoint listen)
    {
        if (options.TlsCertificatePath is not null || options.TlsKeyPath is not null)
        {
            if (options.TlsCertificatePath is null || options.TlsKeyPath is null)
            {
                throw new ArgumentException("--tls-cert and --tls-key go together: give both PEM files, or neither to use a generated certificate");
            }
            try
            {
                return X509Certificate2.CreateFromPemFile(options.TlsCertificatePath, options.TlsKeyPath);
            }
            catch (Exception e) when (e is CryptographicException or IOException)
            {
                throw new ArgumentException($"cannot load the TLS certificate ({options.TlsCertificatePath}) with its key ({options.TlsKeyPath}): {e.Message}", e);
            }
        }
        var certPath = Path.Combine(options.DataDirectory, "tls.crt");
        var keyPath = Path.Combine(options.DataDirectory, "tls.key");
        if (File.Exists(certPath) && File.Exists(keyPath))
        {
            return X509Certificate2.CreateFromPemFile(certPath, keyPath);
        }
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN=Ferry controller {Environment.MachineName}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddDnsName(Environment.MachineName);
        san.AddIpAddress(IPAddress.Loopback);
        san.AddIpAddress(IPAddress.IPv6Loopback);
        if (!listen.Address.Equals(IPAddress.Any) && !listen.Address.Equals(IPAddress.IPv6Any) && !IPAddress.IsLoopback(listen.Address))
        {
            san.AddIpAddress(listen.Address);
        }
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var now = DateTimeOffset.UtcNow;
        using var created = request.CreateSelfSigned(now.AddDays(-1), now.AddYears(5));
        AtomicFile.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem(), ownerOnly: true);
        AtomicFile.WriteAllText(certPath, created.ExportCertificatePem(), ownerOnly: false);
        return X509Certificate2.CreateFromPemFile(certPath, keyPath);
    }
}
