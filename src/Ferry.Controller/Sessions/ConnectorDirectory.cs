using System.Collections.Concurrent;
using System.Text.Json;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Sessions;

/// <summary>What one connector found for a resource on which its network's connectors disagree.</summary>
public sealed record ConnectorFinding(string Connector, string Status, string? Detail);

/// <summary>A resource that the connectors of its network do not see alike, though they are meant to be interchangeable.</summary>
public sealed record ResourceDisagreement(string ResourceId, string Network, ConnectorFinding[] Findings)
{
    /// <summary>One line for operators: who sees what.</summary>
    public string Summary => "connectors disagree: " + string.Join("; ", Findings.Select(f => $"{f.Connector} {f.Status}{(f.Detail is { Length: > 0 } d ? $" ({d})" : "")}"));
}

/// <summary>
/// The connectors clients route to (online ones, with location and reported load) and what each found when it checked its
/// network's resources, so resources on which a network's connectors disagree can be flagged.
/// </summary>
public sealed partial class ConnectorDirectory(ControllerStore store, TokenService tokens, TimeProvider time, ILogger<ConnectorDirectory> logger)
{
    // The checks worth comparing: "unchecked" says nothing about the resource.
    private static readonly HashSet<string> Verdicts = new(StringComparer.Ordinal) { "ok", "unresolvable", "unreachable" };

    // What was last logged per resource, so a disagreement is logged once when it appears and once when it ends.
    private readonly ConcurrentDictionary<string, string> _flagged = new(StringComparer.Ordinal);

    /// <summary>The online connectors of each of <paramref name="networks"/> (by name), for a client to route among.</summary>
    public async Task<NetworkConnectors[]> OnlineAsync(IEnumerable<string> networks, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var all = await store.ListDaemonsAsync(PeerIdentity.Connector, null, ct);
        var online = all.Where(d => IsOnline(d, now)).ToList();
        return [.. networks.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).Select(n => new NetworkConnectors(n, [.. online
            .Where(d => d.NetworkName == n)
            .Select(d => new ConnectorRoute(new PeerIdentity(PeerIdentity.Connector, d.Id).ToString(), d.Name, d.Location, StatusOf(d)?.Clients ?? 0))
            .OrderBy(r => r.Identity, StringComparer.Ordinal)]))];
    }

    /// <summary>What the connector last reported about itself; null before its first report.</summary>
    public static ConnectorStatusMessage? StatusOf(DaemonRow row)
    {
        if (row.Status is null)
        {
            return null;
        }
        try
        {
            return JsonSerializer.Deserialize<ConnectorStatusMessage>(row.Status, RelayDirectory.StatusJson);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>Keeps a connector's report; returns whether its client count changed (clients route by it).</summary>
    public async Task<bool> ReportAsync(DaemonRow connector, ConnectorStatusMessage? previous, ConnectorStatusMessage report, CancellationToken ct)
    {
        var bounded = report with { Resources = [.. report.Resources.Take(1024).Select(r => r with { Detail = r.Detail is { Length: > 300 } d ? d[..300] : r.Detail })] };
        await store.UpdateStatusAsync(connector.Id, JsonSerializer.Serialize(bounded, RelayDirectory.StatusJson), ct);
        if (previous is null || !previous.Resources.SequenceEqual(bounded.Resources))
        {
            await LogDisagreementsAsync(connector.NetworkId!, ct);
        }
        return previous?.Clients != report.Clients;
    }

    /// <summary>Resources on which the online connectors of <paramref name="networkId"/> (or of every network, when null) disagree.</summary>
    public async Task<IReadOnlyList<ResourceDisagreement>> DisagreementsAsync(string? networkId, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var connectors = (await store.ListDaemonsAsync(PeerIdentity.Connector, networkId, ct)).Where(d => IsOnline(d, now)).ToList();
        var result = new List<ResourceDisagreement>();
        foreach (var network in connectors.GroupBy(c => c.NetworkId!))
        {
            var findings = network
                .SelectMany(c => (StatusOf(c)?.Resources ?? []).Where(r => Verdicts.Contains(r.Status)).Select(r => (r.ResourceId, Finding: new ConnectorFinding(c.Name, r.Status, r.Detail))))
                .GroupBy(f => f.ResourceId, StringComparer.Ordinal);
            foreach (var resource in findings)
            {
                if (resource.Select(f => f.Finding.Status).Distinct(StringComparer.Ordinal).Count() > 1)
                {
                    result.Add(new ResourceDisagreement(resource.Key, network.First().NetworkName ?? network.Key,
                        [.. resource.Select(f => f.Finding).OrderBy(f => f.Connector, StringComparer.Ordinal)]));
                }
            }
        }
        return result;
    }

    private async Task LogDisagreementsAsync(string networkId, CancellationToken ct)
    {
        var resources = (await store.ListResourcesAsync(networkId, ct)).ToDictionary(r => r.Id, r => r.Name, StringComparer.Ordinal);
        var now = (await DisagreementsAsync(networkId, ct)).ToDictionary(d => d.ResourceId, StringComparer.Ordinal);
        foreach (var (id, disagreement) in now)
        {
            var verdicts = string.Join(",", disagreement.Findings.Select(f => f.Connector + "=" + f.Status));
            if (_flagged.TryGetValue(id, out var last) && last == verdicts)
            {
                continue;
            }
            _flagged[id] = verdicts;
            LogDisagreement(logger, resources.GetValueOrDefault(id, id), disagreement.Network, disagreement.Summary);
        }
        foreach (var id in resources.Keys.Where(id => !now.ContainsKey(id)))
        {
            if (_flagged.TryRemove(id, out _))
            {
                LogAgreement(logger, resources[id]);
            }
        }
    }

    private bool IsOnline(DaemonRow d, DateTimeOffset now) => d.State == "online" && tokens.LiveSessionDescription(d, now) is not null;

    [LoggerMessage(140, LogLevel.Warning, "Resource {Resource} of network {Network}: {Summary}; its connectors are meant to be interchangeable, so check their DNS and routes")]
    private static partial void LogDisagreement(ILogger logger, string resource, string network, string summary);

    [LoggerMessage(141, LogLevel.Information, "Resource {Resource}: its connectors agree again")]
    private static partial void LogAgreement(ILogger logger, string resource);
}
