using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.Stun;
using Microsoft.Extensions.Logging;

namespace Ferry.Relay;

/// <summary>How a relay process runs; bound from 'ferry relay'.</summary>
public sealed class RelayDaemonOptions
{
    public required Ferry.Core.ControlPlane.ControllerEndpoints Controller { get; init; }
    public required ControllerTrust Trust { get; init; }
    public required string TokensPath { get; init; }

    /// <summary>TCP endpoints for relay links (30000-31000 and optionally 443 in production).</summary>
    public required IReadOnlyList<IPEndPoint> TcpListen { get; init; }

    /// <summary>UDP endpoints of the STUN server (3478 in production).</summary>
    public required IReadOnlyList<IPEndPoint> StunListen { get; init; }

    /// <summary>The address peers should dial when the relay binds a wildcard address (its public IP or name).</summary>
    public string? Advertise { get; init; }

    /// <summary>Folder of the local control socket ('ferry status'); none when unset.</summary>
    public string? StateDirectory { get; init; }

    /// <summary>Where to serve /healthz, /readyz and /metrics over plain HTTP; off when unset.</summary>
    public IPEndPoint? MetricsListen { get; init; }
}

/// <summary>The relay process: a session with the controller for its certificate, a relay server for ticketed peer pairs, a STUN server, and load reports.</summary>
public sealed partial class RelayDaemon(RelayDaemonOptions options, ILoggerFactory loggers)
{
    private static readonly TimeSpan ReportInterval = TimeSpan.FromSeconds(2);
    private readonly ILogger _logger = loggers.CreateLogger<RelayDaemon>();

    public async Task RunAsync(CancellationToken ct)
    {
        var loop = new DaemonSessionLoop(options.Controller, options.Trust, options.TokensPath, TimeProvider.System, _logger);
        // Peers dial the advertised addresses and check the relay's certificate names them.
        loop.Session.CertificateNames = [.. Advertised(options.TcpListen).Select(e => e[..e.LastIndexOf(':')].Trim('[', ']')).Distinct()];
        await using var stun = new StunServer(new StunServerOptions { EndPoints = [.. options.StunListen] }, loggers.CreateLogger<StunServer>());
        stun.Start();
        LogStun(_logger, string.Join(", ", stun.LocalEndPoints));
        RelayServer? server = null;
        var serverLock = new SemaphoreSlim(1, 1);
        RelayMetrics.ObserveCounters(() => server?.GetCounters());
        await using var control = options.StateDirectory is null ? null
            : await Ferry.Core.Operations.LocalControl.StartAsync(options.StateDirectory, "relay", () => Status(loop, server, stun), _logger, ct);
        await using var ops = options.MetricsListen is null ? null
            : await Ferry.Core.Operations.OpsServer.StartAsync(options.MetricsListen, [RelayMetrics.MeterName], new Ferry.Core.Operations.DelegateReadiness(() =>
                server is null ? "the relay-link listener is not up yet (it starts with the first certificate from the controller)"
                : loop.ConnectedSince is null ? $"no session with the controller ({loop.LastError?.Error ?? "connecting"})"
                : null), _logger, ct);
        try
        {
            loop.OnMessage = async (message, socket, sct) =>
            {
                if (message is not CertificateIssuedMessage issued || loop.Session.Certificate is not { } certificate)
                {
                    return;
                }
                var names = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().SelectMany(e => e.EnumerateIPAddresses().Select(i => i.ToString()).Concat(e.EnumerateDnsNames()));
                LogCertificate(_logger, certificate.NotAfter.ToUniversalTime(), string.Join(", ", names));
                await serverLock.WaitAsync(sct);
                try
                {
                    // Links are checked against the deployment CA that signed this relay's own certificate.
                    // A renewed certificate applies to new links; the listener keeps running for the ones already up.
                    if (server is not null)
                    {
                        server.UpdateCertificate(certificate);
                    }
                    else
                    {
                        var ca = X509Certificate2.CreateFromPem(issued.CaPem);
                        server = new RelayServer(new RelayServerOptions { Endpoints = [.. options.TcpListen], ServerCertificate = certificate, CaCertificate = ca }, loggers.CreateLogger<RelayServer>());
                        await server.StartAsync(sct);
                        LogListening(_logger, string.Join(", ", server.BoundEndpoints));
                    }
                }
                finally
                {
                    serverLock.Release();
                }
                await ReportAsync(socket, server, stun, sct);
            };
            loop.OnWelcome = (welcome, socket, sct) =>
            {
                _ = Task.Run(async () =>
                {
                    using var timer = new PeriodicTimer(ReportInterval);
                    try
                    {
                        while (await timer.WaitForNextTickAsync(sct) && socket.State == System.Net.WebSockets.WebSocketState.Open)
                        {
                            if (server is not null)
                            {
                                await ReportAsync(socket, server, stun, sct);
                            }
                        }
                    }
                    catch (Exception e) when (e is OperationCanceledException or System.Net.WebSockets.WebSocketException or ObjectDisposedException)
                    {
                        // The session ended; the next one starts its own reporter.
                    }
                }, CancellationToken.None);
                return Task.CompletedTask;
            };
            await loop.RunAsync(ct);
        }
        finally
        {
            if (server is not null)
            {
                await server.DisposeAsync();
            }
        }
    }

    private static Ferry.Core.Operations.DaemonStatus Status(DaemonSessionLoop loop, RelayServer? server, StunServer stun)
    {
        var counters = server?.GetCounters();
        return loop.Status(
            [],
            counters?.PeersConnected ?? 0,
            [.. (server?.BoundEndpoints ?? []).Select(e => $"relay {e}"), .. stun.LocalEndPoints.Select(e => $"stun {e}")],
            counters is null ? null : new Dictionary<string, long>
            {
                ["links_accepted"] = counters.LinksAccepted,
                ["tickets_bound"] = counters.TicketsBound,
                ["bytes_in"] = counters.BytesIn,
                ["bytes_out"] = counters.BytesOut,
                ["packets_in"] = counters.PacketsIn,
                ["packets_out"] = counters.PacketsOut,
                ["packets_dropped"] = counters.PacketsDropped,
                ["refusals"] = counters.Refusals.Values.Sum(),
            });
    }

    private async Task ReportAsync(SessionSocket socket, RelayServer server, StunServer stun, CancellationToken ct)
    {
        var counters = server.GetCounters();
        await socket.SendAsync(new RelayStatusMessage(
            Advertised(server.BoundEndpoints),
            Advertised(stun.LocalEndPoints),
            counters.PeersConnected,
            counters.BytesIn,
            counters.BytesOut,
            counters.PacketsIn,
            counters.PacketsOut,
            counters.PacketsPerSecond,
            counters.Refusals.Values.Sum()), ct);
    }

    /// <summary>Turns bound endpoints into ones peers can dial: a wildcard bind is advertised by --advertise or each host address.</summary>
    private string[] Advertised(IReadOnlyList<IPEndPoint> bound)
    {
        var result = new List<string>();
        foreach (var endpoint in bound)
        {
            if (!endpoint.Address.Equals(IPAddress.Any) && !endpoint.Address.Equals(IPAddress.IPv6Any))
            {
                result.Add(endpoint.ToString());
            }
            else if (options.Advertise is not null)
            {
                result.Add(IPAddress.TryParse(options.Advertise, out var ip) ? new IPEndPoint(ip, endpoint.Port).ToString() : $"{options.Advertise}:{endpoint.Port}");
            }
            else
            {
                foreach (var address in HostFacts.PrivateIps())
                {
                    var ip = IPAddress.Parse(address);
                    if (ip.AddressFamily == AddressFamily.InterNetwork || endpoint.Address.Equals(IPAddress.IPv6Any))
                    {
                        result.Add(new IPEndPoint(ip, endpoint.Port).ToString());
                    }
                }
            }
        }
        return [.. result.Distinct()];
    }

    [LoggerMessage(300, LogLevel.Information, "STUN server on {Endpoints}")]
    private static partial void LogStun(ILogger logger, string endpoints);

    [LoggerMessage(302, LogLevel.Information, "Certificate valid until {NotAfter:u} for {Names}")]
    private static partial void LogCertificate(ILogger logger, DateTime notAfter, string names);

    [LoggerMessage(301, LogLevel.Information, "Relay links accepted on {Endpoints}")]
    private static partial void LogListening(ILogger logger, string endpoints);
}
