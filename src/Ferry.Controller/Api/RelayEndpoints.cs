using System.Text.Json;
using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Ferry.Controller.Api;

/// <summary>/api/v1/relays: provisioning relays with their own single-owner token pairs, and their health and load.</summary>
public static class RelayEndpoints
{
    public static void MapRelayApi(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/v1/relays");
        api.MapPost("", ProvisionAsync);
        api.MapGet("", async (ControllerStore store, TokenService tokens, TimeProvider time, CancellationToken ct) =>
        {
            var views = new List<RelayView>();
            foreach (var row in await store.ListDaemonsAsync(PeerIdentity.Relay, null, ct))
            {
                views.Add(await ViewAsync(store, tokens, row, time, ct, details: false));
            }
            return views;
        });
        api.MapGet("/{relay}", async (string relay, ControllerStore store, TokenService tokens, TimeProvider time, CancellationToken ct) =>
            await ViewAsync(store, tokens, await store.FindDaemonAsync(PeerIdentity.Relay, relay, ct) ?? throw ApiException.NotFound("relay", relay), time, ct));
        api.MapDelete("/{relay}", async (string relay, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct) =>
        {
            var row = await store.FindDaemonAsync(PeerIdentity.Relay, relay, ct) ?? throw ApiException.NotFound("relay", relay);
            await store.DeleteDaemonAsync(row.Id, ct);
            await AdminEndpoints.AuditAsync(http, store, time, "relay.remove", row.Name, ct);
            await sessions.DisconnectAsync(new PeerIdentity(PeerIdentity.Relay, row.Id).ToString(), "relay removed by an administrator");
            sessions.NotifyRelaysChanged();
            return Results.NoContent();
        });
    }

    private static async Task<IResult> ProvisionAsync(RelayProvisionRequest request, ControllerStore store, TokenService tokens, ControllerInfo info, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = request.Name is { Length: > 0 } ? AdminEndpoints.RequireName(request.Name, "relay") : $"relay-{TokenFormat.NewId("")[..6]}";
        var location = AdminEndpoints.ValidateLocation(request.Location);
        if (await store.FindDaemonAsync(PeerIdentity.Relay, name, ct) is not null)
        {
            throw ApiException.Conflict($"a relay named '{name}' exists already; pick another name");
        }
        var row = new DaemonRow { Id = TokenFormat.NewId("rl_"), Kind = PeerIdentity.Relay, Name = name, Location = location, CreatedAt = time.GetUtcNow().ToUnixTimeMilliseconds() };
        var issued = tokens.NewPair(row.Id, "active", null);
        await AdminEndpoints.UniqueAsync(() => store.InsertDaemonAsync(row, issued.Row, AdminEndpoints.ActorOf(http), ct), $"a relay named '{name}' exists already");
        await AdminEndpoints.AuditAsync(http, store, time, "relay.provision", name, ct);
        var file = new TokenFile
        {
            Kind = PeerIdentity.Relay,
            Id = row.Id,
            Name = name,
            Controller = info.Url,
            ControllerFingerprint = info.Fingerprint,
            AccessToken = issued.AccessToken,
            AccessTokenExpiresAt = issued.AccessExpiresAt,
            RefreshToken = issued.RefreshToken,
        };
        var view = await ViewAsync(store, tokens, (await store.GetDaemonAsync(row.Id, ct))!, time, ct);
        return Results.Created($"/api/v1/relays/{row.Id}", new RelayProvisioned(view, file, AdminEndpoints.DeployFor(file, "relay", "--listen 0.0.0.0:30000 --stun 0.0.0.0:3478")));
    }

    internal static async Task<RelayView> ViewAsync(ControllerStore store, TokenService tokens, DaemonRow row, TimeProvider time, CancellationToken ct, bool details = true)
    {
        var online = row.State == "online" && tokens.LiveSessionDescription(row, time.GetUtcNow()) is not null;
        var status = row.Status is null ? null : JsonSerializer.Deserialize<RelayStatusMessage>(row.Status, RelayDirectory.StatusJson);
        var history = details ? await store.ListStateChangesAsync(row.Id, 50, ct) : [];
        var events = details ? await store.ListEventsAsync(row.Id, 50, ct) : [];
        return new RelayView
        {
            Id = row.Id,
            Name = row.Name,
            Location = row.Location,
            State = online ? "online" : "offline",
            OnlineSince = online && row.OnlineSince is { } on ? AdminEndpoints.Time(on) : null,
            OfflineSince = online ? null : AdminEndpoints.Time(row.OfflineSince ?? row.LastSeen ?? row.CreatedAt),
            TimeOffsetMs = row.TimeOffsetMs,
            Hostname = row.Hostname,
            PublicIp = row.PublicIp,
            Version = row.Version,
            LastSeen = row.LastSeen is { } seen ? AdminEndpoints.Time(seen) : null,
            TcpEndpoints = status?.TcpEndpoints ?? [],
            StunEndpoints = status?.StunEndpoints ?? [],
            Peers = online ? status?.Peers ?? 0 : 0,
            BytesIn = status?.BytesIn ?? 0,
            BytesOut = status?.BytesOut ?? 0,
            PacketsIn = status?.PacketsIn ?? 0,
            PacketsOut = status?.PacketsOut ?? 0,
            PacketsPerSecond = online ? status?.PacketsPerSecond ?? 0 : 0,
            Refused = status?.Refused ?? 0,
            History = [.. history.Select(h => new StateChangeView(h.State, AdminEndpoints.Time(h.At), h.Reason))],
            Events = [.. events.Select(e => new EventView(AdminEndpoints.Time(e.At), e.Kind, e.Message))],
        };
    }
}
