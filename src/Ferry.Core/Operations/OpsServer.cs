using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace Ferry.Core.Operations;

/// <summary>
/// The plain-HTTP listener a daemon opens with --metrics-listen: /healthz (the process runs), /readyz (it can serve) and
/// /metrics (its meters, in the Prometheus text format). It serves nothing else, so it can face a monitoring network.
/// </summary>
public static partial class OpsServer
{
    /// <summary>The tag health checks carry when they decide readiness; /healthz runs none.</summary>
    public const string ReadyTag = "ready";

    /// <summary>Reads --metrics-listen: IP:PORT or localhost:PORT (port 0 picks a free one).</summary>
    public static IPEndPoint ParseListen(string text, string option = "--metrics-listen")
    {
        var value = text.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase) ? "127.0.0.1" + text["localhost".Length..] : text;
        if (!value.Contains(':', StringComparison.Ordinal) || !IPEndPoint.TryParse(value, out var endpoint))
        {
            throw new ArgumentException($"{option} '{text}' is not IP:PORT; give the address Prometheus scrapes, for example 127.0.0.1:9464");
        }
        return endpoint;
    }

    /// <summary>Adds /healthz and /readyz, answered through ASP.NET Core health checks, to an app whose services called AddHealthChecks.</summary>
    public static void MapHealthEndpoints(IEndpointRouteBuilder app)
    {
        app.MapHealthChecks("/healthz", new HealthCheckOptions
        {
            // Alive means the process answers; readiness is /readyz's question.
            Predicate = _ => false,
            ResponseWriter = (context, _) => WriteAsync(context, new { status = "alive" }),
        });
        app.MapHealthChecks("/readyz", new HealthCheckOptions
        {
            Predicate = check => check.Tags.Contains(ReadyTag),
            ResponseWriter = (context, report) => WriteAsync(context, report.Status == HealthStatus.Healthy
                ? new { status = "ready" }
                : (object)new
                {
                    status = "not ready",
                    reason = string.Join("; ", report.Entries.Where(e => e.Value.Status != HealthStatus.Healthy).Select(e => e.Value.Description ?? e.Key)),
                }),
        });
    }

    /// <summary>Starts the listener on <paramref name="listen"/>; dispose the app to stop it. <paramref name="readiness"/> decides /readyz.</summary>
    public static async Task<WebApplication> StartAsync(IPEndPoint listen, string[] meters, IHealthCheck readiness, ILogger logger, CancellationToken ct)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        // The daemon's cancellation stops this host; it must not take SIGTERM/SIGINT for itself.
        builder.Services.AddSingleton<IHostLifetime, EmbeddedHostLifetime>();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Listen(listen);
        });
        builder.Services.AddHealthChecks().AddCheck("ready", readiness, tags: [ReadyTag]);
        AddMetrics(builder.Services, meters);
        var app = builder.Build();
        MapHealthEndpoints(app);
        app.MapPrometheusScrapingEndpoint("/metrics");
        try
        {
            await app.StartAsync(ct);
        }
        catch (IOException e)
        {
            await app.DisposeAsync();
            throw new InvalidOperationException($"cannot listen on --metrics-listen {listen}: {e.Message.TrimEnd('.')}; pick a free port", e);
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        LogListening(logger, bound);
        return app;
    }

    /// <summary>Exports <paramref name="meters"/> (and the runtime's own, for memory and GC) to the Prometheus scraping endpoint.</summary>
    public static void AddMetrics(IServiceCollection services, string[] meters)
        => services.AddOpenTelemetry()
            // "Ferry.Relay" → service_name "ferry-relay", so one Prometheus job can tell the parts apart.
            .ConfigureResource(r => r.AddService(meters.Length > 0 ? meters[0].Replace('.', '-').ToLowerInvariant() : "ferry"))
            .WithMetrics(m => m.AddMeter(meters).AddMeter("System.Runtime").AddPrometheusExporter());

    private static Task WriteAsync(HttpContext context, object body)
    {
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(JsonSerializer.Serialize(body));
    }

    [LoggerMessage(1100, LogLevel.Information, "Health and metrics on {Url} (/healthz, /readyz, /metrics)")]
    private static partial void LogListening(ILogger logger, string url);
}

/// <summary>A readiness check from a function: null means ready, otherwise the reason it is not.</summary>
public sealed class DelegateReadiness(Func<string?> notReadyBecause) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        => Task.FromResult(notReadyBecause() is { } reason ? HealthCheckResult.Unhealthy(reason) : HealthCheckResult.Healthy());
}

/// <summary>A host lifetime that leaves process signals to the command line, for web hosts embedded in a daemon.</summary>
public sealed class EmbeddedHostLifetime : IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
