using System.Data.Common;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Api;

/// <summary>Where this controller can be reached and how its certificate is pinned; filled at start, used in deploy instructions.</summary>
public sealed class ControllerInfo
{
    public string Url { get; set; } = "";
    public string Fingerprint { get; set; } = "";
}

/// <summary>The admin REST API (/api/v1/…): the model's create, list, show and delete operations, each audited.</summary>
public static partial class AdminEndpoints
{
    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    private static partial Regex NamePattern();

    public static void MapAdminApi(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/v1");

        api.MapGet("/networks", async (ControllerStore store, CancellationToken ct) => (await store.ListNetworksAsync(ct)).Select(ToView));
        api.MapGet("/networks/{network}", async (string network, ControllerStore store, CancellationToken ct) => ToView(await RequireNetworkAsync(store, network, ct)));
        api.MapPost("/networks", CreateNetworkAsync);
        api.MapPatch("/networks/{network}", UpdateNetworkAsync);
        api.MapDelete("/networks/{network}", DeleteNetworkAsync);

        api.MapGet("/connectors", ListConnectorsAsync);
        api.MapGet("/connectors/{connector}", ShowConnectorAsync);
        api.MapPost("/connectors", ProvisionConnectorAsync);
        api.MapDelete("/connectors/{connector}", RemoveConnectorAsync);

        api.MapGet("/resources", async (string? network, ControllerStore store, ConnectorDirectory connectors, CancellationToken ct) =>
        {
            var net = network is null ? null : await RequireNetworkAsync(store, network, ct);
            var disagreements = (await connectors.DisagreementsAsync(net?.Id, ct)).ToDictionary(d => d.ResourceId, StringComparer.Ordinal);
            return (await store.ListResourcesAsync(net?.Id, ct)).Select(r => ToView(r) with { Warning = disagreements.GetValueOrDefault(r.Id)?.Summary });
        });
        api.MapPost("/resources", AddResourceAsync);
        api.MapPatch("/resources/{resource}", UpdateResourceAsync);
        api.MapDelete("/resources/{resource}", RemoveResourceAsync);

        api.MapGet("/operators", async (ControllerStore store, CancellationToken ct) => (await store.ListOperatorsAsync(ct)).Select(ToView));
        api.MapPost("/operators", CreateOperatorAsync);
        api.MapDelete("/operators/{name}", RemoveOperatorAsync);

        api.MapGet("/users", ListUsersAsync);
        api.MapPost("/users", CreateUserAsync);
        api.MapPatch("/users/{user}", SetUserPasswordAsync);
        api.MapDelete("/users/{user}", RemoveUserAsync);
        MapUserMfa(api);

        api.MapGet("/groups", ListGroupsAsync);
        api.MapPost("/groups", CreateGroupAsync);
        api.MapDelete("/groups/{group}", DeleteGroupAsync);
        api.MapPost("/groups/{group}/members", AddMemberAsync);
        api.MapDelete("/groups/{group}/members/{user}", RemoveMemberAsync);

        api.MapGet("/service-accounts", async (ControllerStore store, CancellationToken ct) =>
            (await store.ListServiceAccountsAsync(ct)).Select(s => new ServiceAccountView(s.Id, s.Name, Time(s.CreatedAt))));
        api.MapPost("/service-accounts", CreateServiceAccountAsync);
        api.MapDelete("/service-accounts/{account}", RemoveServiceAccountAsync);

        api.MapGet("/devices", ListDevicesAsync);
        api.MapDelete("/devices/{device}", RemoveDeviceAsync);

        api.MapGet("/policies", async (ControllerStore store, CancellationToken ct) => (await store.ListPoliciesAsync(ct)).Select(ToView));
        api.MapPost("/policies", GrantAsync);
        api.MapDelete("/policies/{policy}", RevokeAsync);

        api.MapGet("/audit", async (int? limit, ControllerStore store, CancellationToken ct) =>
            (await store.ListAuditAsync(Math.Clamp(limit ?? 100, 1, 1000), ct)).Select(a => new AuditView(Time(a.At), a.Actor, a.Action, a.Target)));
        api.MapGet("/security-events", ListSecurityEventsAsync);
    }

    // ---- security events

    private static async Task<IEnumerable<SecurityEventView>> ListSecurityEventsAsync(string? kind, string? since, int? limit, ControllerStore store, CancellationToken ct)
    {
        if (limit is < 1 or > 1000)
        {
            throw ApiException.BadRequest($"limit {limit} is out of range: give 1 to 1000");
        }
        DateTimeOffset? from = null;
        if (!string.IsNullOrEmpty(since))
        {
            from = DateTimeOffset.TryParse(since, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal, out var parsed)
                ? parsed
                : throw ApiException.BadRequest($"since '{since}' is not a time: give ISO 8601, for example 2026-01-31T12:00:00Z");
        }
        var rows = await store.ListSecurityEventsAsync(string.IsNullOrEmpty(kind) ? null : kind, from?.ToUnixTimeMilliseconds(), limit ?? 100, ct);
        return rows.Select(e => new SecurityEventView(Time(e.At), e.Kind, e.Subject, e.Source, e.Message));
    }

    // ---- networks

    private static async Task<IResult> CreateNetworkAsync(NetworkCreateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = RequireName(request.Name, "network");
        if (request.DnsServer is { Length: > 0 } dns && !IPEndPoint.TryParse(dns, out _))
        {
            throw ApiException.BadRequest($"DNS server '{dns}' is not an IP address or IP:port");
        }
        if (await store.FindNetworkAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"a network named '{name}' exists already; pick another name");
        }
        var mfa = MfaSetting(request.RequireMfa, request.MfaIdleTimeoutSeconds, null);
        var row = new NetworkRow { Id = TokenFormat.NewId("net_"), Name = name, DnsServer = NullIfEmpty(request.DnsServer), IsExit = request.Exit ? 1 : 0, CreatedAt = Now(time), MfaIdleTimeoutS = mfa };
        await UniqueAsync(() => store.InsertNetworkAsync(row, ct), $"a network named '{name}' exists already");
        await AuditAsync(http, store, time, "network.create", mfa is null ? name : $"{name} require-mfa idle={mfa}s", ct);
        return Results.Created($"/api/v1/networks/{row.Id}", ToView(row));
    }

    /// <summary>Changes the DNS server or exit flag; connectors of the network apply it from the next access push, without a restart.</summary>
    private static async Task<IResult> UpdateNetworkAsync(string network, NetworkUpdateRequest request, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await RequireNetworkAsync(store, network, ct);
        var dns = request.DnsServer is null ? row.DnsServer : NullIfEmpty(request.DnsServer);
        if (dns is not null && !IPEndPoint.TryParse(dns, out _))
        {
            throw ApiException.BadRequest($"DNS server '{dns}' is not an IP address or IP:port");
        }
        var exit = request.Exit ?? row.IsExit != 0;
        if (!exit && row.IsExit != 0)
        {
            var publicResources = (await store.ListResourcesAsync(row.Id, ct))
                .Where(r => ResourceAddress.TryParse(r.Address, out var a, out _) && a.IsPublic).Select(r => r.Name).ToArray();
            if (publicResources.Length > 0)
            {
                throw ApiException.Conflict($"network '{row.Name}' holds public resources ({string.Join(", ", publicResources)}); remove them before it stops being an exit network");
            }
        }
        if (request.RequireMfa == false && request.MfaIdleTimeoutSeconds is not null)
        {
            throw ApiException.BadRequest("--no-require-mfa and --mfa-idle-timeout contradict each other: give one of them");
        }
        var mfa = MfaSetting(request.RequireMfa ?? row.MfaIdleTimeoutS is not null, request.MfaIdleTimeoutSeconds, row.MfaIdleTimeoutS);
        await store.UpdateNetworkAsync(row.Id, dns, exit, mfa, ct);
        await AuditAsync(http, store, time, "network.update", $"{row.Name} dns={dns ?? "host"} exit={(exit ? "yes" : "no")} mfa={(mfa is null ? "no" : $"idle {mfa}s")}", ct);
        sessions.NotifyPolicyChanged();
        return Results.Ok(ToView(await RequireNetworkAsync(store, row.Id, ct)));
    }

    private static async Task<IResult> DeleteNetworkAsync(string network, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await RequireNetworkAsync(store, network, ct);
        if (row.Connectors > 0 || row.Resources > 0)
        {
            throw ApiException.Conflict($"network '{row.Name}' still has {row.Connectors} connector(s) and {row.Resources} resource(s); remove them first");
        }
        await store.DeleteNetworkAsync(row.Id, ct);
        await AuditAsync(http, store, time, "network.delete", row.Name, ct);
        return Results.NoContent();
    }

    // ---- connectors

    private static async Task<IResult> ProvisionConnectorAsync(ConnectorProvisionRequest request, ControllerStore store, TokenService tokens, ControllerOptions options, ControllerInfo info, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(request.Network))
        {
            throw ApiException.BadRequest("network is required: name the remote network the connector serves");
        }
        var network = await RequireNetworkAsync(store, request.Network, ct);
        var name = request.Name is { Length: > 0 } ? RequireName(request.Name, "connector") : $"{network.Name}-{TokenFormat.NewId("")[..6]}";
        var location = ValidateLocation(request.Location);
        if (await store.FindDaemonAsync(PeerIdentity.Connector, name, ct) is not null)
        {
            throw ApiException.Conflict($"a connector named '{name}' exists already; pick another name");
        }
        var row = new DaemonRow { Id = TokenFormat.NewId("cn_"), Kind = PeerIdentity.Connector, Name = name, NetworkId = network.Id, NetworkName = network.Name, Location = location, CreatedAt = Now(time) };
        var issued = tokens.NewPair(row.Id, "active", null);
        await UniqueAsync(() => store.InsertDaemonAsync(row, issued.Row, ActorOf(http), ct), $"a connector named '{name}' exists already");
        await AuditAsync(http, store, time, "connector.provision", $"{name} in {network.Name}", ct);
        var file = new TokenFile
        {
            Kind = PeerIdentity.Connector,
            Id = row.Id,
            Name = name,
            Network = network.Name,
            Controller = info.Url,
            ControllerFingerprint = info.Fingerprint,
            AccessToken = issued.AccessToken,
            AccessTokenExpiresAt = issued.AccessExpiresAt,
            RefreshToken = issued.RefreshToken,
        };
        var view = await ConnectorViewAsync(store, tokens, options, (await store.GetDaemonAsync(row.Id, ct))!, time, ct);
        return Results.Created($"/api/v1/connectors/{row.Id}", new ConnectorProvisioned(view, file, DeployFor(file)));
    }

    private static async Task<IResult> ListConnectorsAsync(string? network, ControllerStore store, TokenService tokens, ControllerOptions options, TimeProvider time, CancellationToken ct)
    {
        var net = network is null ? null : await RequireNetworkAsync(store, network, ct);
        var rows = await store.ListDaemonsAsync(PeerIdentity.Connector, net?.Id, ct);
        var views = new List<ConnectorView>();
        foreach (var row in rows)
        {
            views.Add(await ConnectorViewAsync(store, tokens, options, row, time, ct, details: false));
        }
        return Results.Ok(views);
    }

    private static async Task<IResult> ShowConnectorAsync(string connector, ControllerStore store, TokenService tokens, ControllerOptions options, TimeProvider time, CancellationToken ct)
    {
        var row = await store.FindDaemonAsync(PeerIdentity.Connector, connector, ct) ?? throw ApiException.NotFound("connector", connector);
        return Results.Ok(await ConnectorViewAsync(store, tokens, options, row, time, ct));
    }

    /// <summary>Removes a connector: its session ends (its tokens no longer work) and clients stop routing to it.</summary>
    private static async Task<IResult> RemoveConnectorAsync(string connector, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindDaemonAsync(PeerIdentity.Connector, connector, ct) ?? throw ApiException.NotFound("connector", connector);
        await store.DeleteDaemonAsync(row.Id, ct);
        await AuditAsync(http, store, time, "connector.remove", row.Name, ct);
        await sessions.DisconnectAsync(new PeerIdentity(PeerIdentity.Connector, row.Id).ToString(), "connector removed by an administrator");
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    internal static async Task<ConnectorView> ConnectorViewAsync(ControllerStore store, TokenService tokens, ControllerOptions options, DaemonRow row, TimeProvider time, CancellationToken ct, bool details = true)
    {
        var now = time.GetUtcNow();
        // A session whose heartbeats stopped is offline even before its socket is noticed dead.
        var online = row.State == "online" && tokens.LiveSessionDescription(row, now) is not null;
        var history = details ? await store.ListStateChangesAsync(row.Id, 50, ct) : [];
        var events = details ? await store.ListEventsAsync(row.Id, 50, ct) : [];
        var offlineSince = row.OfflineSince ?? (online ? null : row.LastSeen ?? row.CreatedAt);
        var status = ConnectorDirectory.StatusOf(row);
        var resourceNames = details && status is not null && row.NetworkId is not null
            ? (await store.ListResourcesAsync(row.NetworkId, ct)).ToDictionary(r => r.Id, r => r.Name, StringComparer.Ordinal)
            : [];
        return new ConnectorView
        {
            Id = row.Id,
            Name = row.Name,
            Network = row.NetworkName ?? "",
            Location = row.Location,
            State = online ? "online" : "offline",
            OnlineSince = online && row.OnlineSince is { } on ? Time(on) : null,
            OfflineSince = online ? null : Time(offlineSince!.Value),
            UptimeSeconds = online && row.OnlineSince is { } up ? (long)(now - Time(up)).TotalSeconds : null,
            DowntimeSeconds = online ? null : (long)(now - Time(offlineSince!.Value)).TotalSeconds,
            TimeOffsetMs = row.TimeOffsetMs,
            TimeOffsetStatus = row.TimeOffsetMs is { } offset
                ? Math.Abs(offset) > options.ClockTolerance.TotalMilliseconds ? "refused" : Math.Abs(offset) > options.ClockWarning.TotalMilliseconds ? "warning" : "ok"
                : null,
            Stun = new StunStatusView(row.StunStatus, row.StunMapped, row.StunRelays is null ? null : JsonSerializer.Deserialize<string[]>(row.StunRelays), row.StunError, row.StunAt is { } s ? Time(s) : null),
            Hostname = row.Hostname,
            PublicIp = row.PublicIp,
            PrivateIps = row.PrivateIps is null ? [] : JsonSerializer.Deserialize<string[]>(row.PrivateIps) ?? [],
            Version = row.Version,
            LastSeen = row.LastSeen is { } seen ? Time(seen) : null,
            CreatedAt = Time(row.CreatedAt),
            History = [.. history.Select(h => new StateChangeView(h.State, Time(h.At), h.Reason))],
            Events = [.. events.Select(e => new EventView(Time(e.At), e.Kind, e.Message))],
            Clients = online ? status?.Clients : null,
            Flows = online ? status?.Flows : null,
            Replica = online ? row.SessionReplica : null,
            Resources = [.. (status?.Resources ?? []).Where(r => resourceNames.ContainsKey(r.ResourceId)).Select(r => new ResourceCheckView(resourceNames[r.ResourceId], r.Status, r.Detail))],
        };
    }

    internal static DeployInstructions DeployFor(TokenFile file, string part = "connector", string extra = "")
    {
        var tokensPath = $"/var/lib/ferry/{file.Name}.tokens.json";
        var plain = $"ferry {part} --controller {file.Controller} --controller-fingerprint {file.ControllerFingerprint} --tokens {tokensPath}" + (extra.Length > 0 ? " " + extra : "");
        var systemd = $"""
            # /etc/systemd/system/ferry-{part}-{file.Name}.service  (write the tokens JSON to {tokensPath}, mode 0600, first)
            [Unit]
            Description=Ferry {part} {file.Name}
            After=network-online.target
            Wants=network-online.target

            [Service]
            ExecStart=/usr/local/bin/{plain} --state /run/ferry-{part}-{file.Name}
            Restart=always
            RestartSec=2
            # Its own throw-away user, owning only /var/lib/ferry (where the tokens rotate); the rest of the system read-only.
            DynamicUser=yes
            StateDirectory=ferry
            # The control socket 'ferry status --state /run/ferry-{part}-{file.Name}' asks.
            RuntimeDirectory=ferry-{part}-{file.Name}
            UMask=0077
            NoNewPrivileges=yes
            ProtectSystem=strict
            ProtectHome=yes
            PrivateTmp=yes
            PrivateDevices=yes
            ProtectKernelTunables=yes
            ProtectKernelModules=yes
            ProtectKernelLogs=yes
            ProtectControlGroups=yes
            ProtectClock=yes
            ProtectHostname=yes
            # Netlink: the data plane watches interface addresses to notice network changes.
            RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
            RestrictNamespaces=yes
            RestrictRealtime=yes
            RestrictSUIDSGID=yes
            LockPersonality=yes
            SystemCallArchitectures=native
            CapabilityBoundingSet=

            [Install]
            WantedBy=multi-user.target
            """;
        // The images come from deploy/container, one per part, whose ENTRYPOINT is 'ferry PART' and CMD these same flags.
        var container = $"docker run -d --name ferry-{part}-{file.Name} --restart unless-stopped -v ferry-{file.Name}:/var/lib/ferry "
            + (part == "relay" ? "-p 30000:30000/tcp -p 3478:3478/udp " : "")
            + $"-e FERRY_CONTROLLER={file.Controller} -e FERRY_CONTROLLER_FINGERPRINT={file.ControllerFingerprint} "
            + $"-e FERRY_ACCESS_TOKEN={file.AccessToken} -e FERRY_REFRESH_TOKEN={file.RefreshToken} -e FERRY_DAEMON_ID={file.Id} "
            + $"ferry-{part}:latest --tokens /var/lib/ferry/tokens.json" + (extra.Length > 0 ? " " + extra : "");
        return new DeployInstructions(plain, systemd, container, HelmFor(file, part));
    }

    /// <summary>
    /// The chart in deploy/helm/ferry runs each daemon from its own Secret (key tokens.json) and one entry in its
    /// 'connectors' or 'relays' list; the Secret name is the chart's default for that entry, named explicitly all the same.
    /// </summary>
    internal static string HelmFor(TokenFile file, string part)
    {
        var name = file.Name ?? file.Id;
        var secret = $"ferry-{part}-{HelmKey(name)}";
        // From a file, never the command line: arguments show in ps and in shell history.
        var tokensFile = $"{HelmKey(name)}.tokens.json";
        var entry = part == "relay"
            ? $"""
              relays:
                - name: "{name}"
                  tokenSecret: {secret}
                  advertise: ""   # the relay Service's public address
              """
            : $"""
              connectors:
                - name: "{name}"
                  network: "{file.Network}"
                  tokenSecret: {secret}
              """;
        return $"""
            # 1. Save the tokens file shown with these instructions as {tokensFile} (mode 0600), and put it in the {part}'s own
            #    Secret (tokens are single-owner: one Secret per {part}); then delete the file:
            kubectl create secret generic {secret} --from-file=tokens.json={tokensFile}
            # 2. Add this entry to the '{(part == "relay" ? "relays" : "connectors")}' list of your values file (keep the entries already there):
            {entry}
            # 3. Apply it:
            helm upgrade --install ferry deploy/helm/ferry -f values.yaml
            """;
    }

    /// <summary>The chart's Kubernetes name for a daemon (ferry.daemonKey in _helpers.tpl): the name when it is a short DNS label, else a lower-cased form and a hash.</summary>
    internal static string HelmKey(string name)
    {
        if (HelmLabelPattern().IsMatch(name))
        {
            return name;
        }
        var lowered = HelmUnsafePattern().Replace(name.ToLowerInvariant(), "-");
        var hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(name)))[..8];
        return $"{lowered[..Math.Min(22, lowered.Length)].TrimEnd('-')}-{hash}";
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")]
    private static partial Regex HelmLabelPattern();

    [GeneratedRegex("[^a-z0-9-]")]
    private static partial Regex HelmUnsafePattern();

    // ---- resources

    private static async Task<IResult> AddResourceAsync(ResourceCreateRequest request, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(request.Network))
        {
            throw ApiException.BadRequest("network is required: name the remote network the resource is in");
        }
        var network = await RequireNetworkAsync(store, request.Network, ct);
        var address = ValidAddress(request.Address, network);
        if (!PortSet.TryParse(request.Tcp, out var tcp, out var error) || !PortSet.TryParse(request.Udp, out var udp, out error))
        {
            throw ApiException.BadRequest(error);
        }
        if (request.Tcp is not null && request.Udp is null)
        {
            udp = PortSet.None;
        }
        else if (request.Udp is not null && request.Tcp is null)
        {
            tcp = PortSet.None;
        }
        RequireSomeProtocol(tcp, udp);
        var name = request.Name is { Length: > 0 } ? RequireName(request.Name, "resource") : address.Canonical.Replace("*", "wildcard", StringComparison.Ordinal).Replace('/', '_').Replace(':', '_');
        if (await store.FindResourceAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"a resource named '{name}' exists already; pick another name with --name");
        }
        var row = new ResourceRow
        {
            Id = TokenFormat.NewId("rs_"),
            NetworkId = network.Id,
            NetworkName = network.Name,
            Name = name,
            Address = address.Canonical,
            Kind = address.KindName,
            Tcp = tcp.ToString(),
            Udp = udp.ToString(),
            CreatedAt = Now(time),
        };
        await UniqueAsync(() => store.InsertResourceAsync(row, ct), $"a resource named '{name}' exists already");
        await AuditAsync(http, store, time, "resource.add", $"{name} ({row.Address}) in {network.Name}", ct);
        sessions.NotifyPolicyChanged();
        return Results.Created($"/api/v1/resources/{row.Id}", ToView(row));
    }

    /// <summary>Changes a resource in place (name, address, ports); connectors and clients get the new table at once.</summary>
    private static async Task<IResult> UpdateResourceAsync(string resource, ResourceUpdateRequest request, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindResourceAsync(resource, ct) ?? throw ApiException.NotFound("resource", resource);
        if (request is { Name: null, Address: null, Tcp: null, Udp: null })
        {
            throw ApiException.BadRequest("nothing to change: give a new name, address, TCP ports or UDP ports");
        }
        var network = (await store.FindNetworkAsync(row.NetworkId, ct))!;
        if (request.Address is not null)
        {
            var address = ValidAddress(request.Address, network);
            row.Address = address.Canonical;
            row.Kind = address.KindName;
        }
        PortSet? tcp = null, udp = null;
        if ((request.Tcp is not null && !PortSet.TryParse(request.Tcp, out tcp, out var error)) || (request.Udp is not null && !PortSet.TryParse(request.Udp, out udp, out error)))
        {
            throw ApiException.BadRequest(error);
        }
        row.Tcp = (tcp ?? (PortSet.TryParse(row.Tcp, out var oldTcp, out _) ? oldTcp : PortSet.None)).ToString();
        row.Udp = (udp ?? (PortSet.TryParse(row.Udp, out var oldUdp, out _) ? oldUdp : PortSet.None)).ToString();
        PortSet.TryParse(row.Tcp, out var newTcp, out _);
        PortSet.TryParse(row.Udp, out var newUdp, out _);
        RequireSomeProtocol(newTcp!, newUdp!);
        if (request.Name is { Length: > 0 } newName && newName != row.Name)
        {
            RequireName(newName, "resource");
            if (await store.FindResourceAsync(newName, ct) is not null)
            {
                throw ApiException.Conflict($"a resource named '{newName}' exists already; pick another name");
            }
            row.Name = newName;
        }
        await UniqueAsync(() => store.UpdateResourceAsync(row, ct), $"a resource named '{row.Name}' exists already");
        await AuditAsync(http, store, time, "resource.update", $"{row.Name} ({row.Address}, tcp {row.Tcp}, udp {row.Udp}) in {network.Name}", ct);
        // Revocation reaches live flows: connectors re-check every flow against the new table.
        sessions.NotifyPolicyChanged();
        return Results.Ok(ToView(row));
    }

    private static ResourceAddress ValidAddress(string? text, NetworkRow network)
    {
        if (!ResourceAddress.TryParse(text, out var address, out var error))
        {
            throw ApiException.BadRequest(error);
        }
        if (address.IsPublic && network.IsExit == 0)
        {
            throw ApiException.BadRequest($"{address.Canonical} is a public address, and network '{network.Name}' is not an exit network: " +
                "give the private address the connector reaches, or put the resource in an exit network ('ferry admin network create NAME --exit')");
        }
        return address;
    }

    private static void RequireSomeProtocol(PortSet tcp, PortSet udp)
    {
        if (tcp.IsNone && udp.IsNone)
        {
            throw ApiException.BadRequest("a resource must allow at least one protocol: give TCP or UDP ports, or neither for all");
        }
    }

    private static async Task<IResult> RemoveResourceAsync(string resource, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindResourceAsync(resource, ct) ?? throw ApiException.NotFound("resource", resource);
        await store.DeleteResourceAsync(row.Id, ct);
        await AuditAsync(http, store, time, "resource.remove", row.Name, ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    // ---- users and groups

    /// <summary>Creates a console operator; its TOTP secret is generated here and shown only in this answer.</summary>
    private static async Task<IResult> CreateOperatorAsync(OperatorCreateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = RequireName(request.Name, "operator");
        RequirePassword(request.Password, 12, "an operator's password");
        if (await store.FindOperatorAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"an operator named '{name}' exists already");
        }
        var secret = Core.Security.Totp.NewSecret();
        var row = new OperatorRow { Id = TokenFormat.NewId("op_"), Name = name, PasswordHash = PasswordHasher.Hash(request.Password), TotpSecret = Core.Security.Totp.ToBase32(secret), CreatedAt = Now(time) };
        await UniqueAsync(() => store.InsertOperatorAsync(row, ct), $"an operator named '{name}' exists already");
        await AuditAsync(http, store, time, "operator.create", name, ct);
        return Results.Created($"/api/v1/operators/{row.Id}", new OperatorCreated(ToView(row), row.TotpSecret, Core.Security.Totp.ProvisioningUri("Ferry", name, secret)));
    }

    private static async Task<IResult> RemoveOperatorAsync(string name, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindOperatorAsync(name, ct) ?? throw ApiException.NotFound("operator", name);
        await store.DeleteOperatorAsync(row.Id, ct);
        await AuditAsync(http, store, time, "operator.remove", row.Name, ct);
        return Results.NoContent();
    }

    private static OperatorView ToView(OperatorRow o) => new(o.Id, o.Name, Time(o.CreatedAt), o.LastSignIn is { } at ? Time(at) : null);

    private static async Task<IResult> ListUsersAsync(ControllerStore store, CancellationToken ct)
    {
        var memberships = await store.ListMembershipsAsync(ct);
        var enrolled = await store.ListUsersWithTotpAsync(ct);
        return Results.Ok((await store.ListUsersAsync(ct)).Select(u =>
            new UserView(u.Id, u.Name, [.. memberships.Where(m => m.UserId == u.Id).Select(m => m.GroupName)], Time(u.CreatedAt), enrolled.Contains(u.Id))));
    }

    private static async Task<IResult> CreateUserAsync(UserCreateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = RequireName(request.Name, "user");
        RequirePassword(request.Password, 8, "password");
        if (await store.FindUserAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"a user named '{name}' exists already");
        }
        var row = new UserRow { Id = TokenFormat.NewId("us_"), Name = name, PasswordHash = PasswordHasher.Hash(request.Password), CreatedAt = Now(time) };
        await UniqueAsync(() => store.InsertUserAsync(row, ct), $"a user named '{name}' exists already");
        await AuditAsync(http, store, time, "user.create", name, ct);
        return Results.Created($"/api/v1/users/{row.Id}", new UserView(row.Id, row.Name, [], Time(row.CreatedAt)));
    }

    /// <summary>Sets a user's password (an operator resetting a forgotten one); devices already signed in stay signed in.</summary>
    private static async Task<IResult> SetUserPasswordAsync(string user, UserUpdateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        RequirePassword(request.Password, 8, "password");
        await store.SetUserPasswordAsync(row.Id, PasswordHasher.Hash(request.Password), ct);
        await AuditAsync(http, store, time, "user.set-password", row.Name, ct);
        return Results.NoContent();
    }

    private static async Task<IResult> RemoveUserAsync(string user, ControllerStore store, SessionRegistry sessions, ControllerOptions options, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        await store.DeleteUserAsync(row.Id, Now(time), RevokedUntil(options, time), ct);
        await AuditAsync(http, store, time, "user.remove", row.Name, ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    private static async Task<IResult> ListGroupsAsync(ControllerStore store, CancellationToken ct)
    {
        var memberships = await store.ListMembershipsAsync(ct);
        return Results.Ok((await store.ListGroupsAsync(ct)).Select(g =>
            new GroupView(g.Id, g.Name, [.. memberships.Where(m => m.GroupId == g.Id).Select(m => m.UserName)], Time(g.CreatedAt))));
    }

    private static async Task<IResult> CreateGroupAsync(GroupCreateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = RequireName(request.Name, "group");
        if (await store.FindGroupAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"a group named '{name}' exists already");
        }
        var row = new NamedRow { Id = TokenFormat.NewId("gr_"), Name = name, CreatedAt = Now(time) };
        await UniqueAsync(() => store.InsertGroupAsync(row, ct), $"a group named '{name}' exists already");
        await AuditAsync(http, store, time, "group.create", name, ct);
        return Results.Created($"/api/v1/groups/{row.Id}", new GroupView(row.Id, row.Name, [], Time(row.CreatedAt)));
    }

    private static async Task<IResult> DeleteGroupAsync(string group, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindGroupAsync(group, ct) ?? throw ApiException.NotFound("group", group);
        await store.DeleteGroupAsync(row.Id, ct);
        await AuditAsync(http, store, time, "group.delete", row.Name, ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    private static async Task<IResult> AddMemberAsync(string group, GroupMemberRequest request, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var g = await store.FindGroupAsync(group, ct) ?? throw ApiException.NotFound("group", group);
        var u = await store.FindUserAsync(request.User ?? "", ct) ?? throw ApiException.NotFound("user", request.User ?? "");
        if (!await store.AddMemberAsync(g.Id, u.Id, ct))
        {
            throw ApiException.Conflict($"user '{u.Name}' is a member of group '{g.Name}' already");
        }
        await AuditAsync(http, store, time, "group.add-member", $"{u.Name} to {g.Name}", ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    private static async Task<IResult> RemoveMemberAsync(string group, string user, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var g = await store.FindGroupAsync(group, ct) ?? throw ApiException.NotFound("group", group);
        var u = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        if (!await store.RemoveMemberAsync(g.Id, u.Id, ct))
        {
            throw ApiException.NotFound("membership of user in group", $"{u.Name} in {g.Name}");
        }
        await AuditAsync(http, store, time, "group.remove-member", $"{u.Name} from {g.Name}", ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    // ---- service accounts

    private static async Task<IResult> CreateServiceAccountAsync(ServiceAccountCreateRequest request, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var name = RequireName(request.Name, "service account");
        if (await store.FindServiceAccountAsync(name, ct) is not null)
        {
            throw ApiException.Conflict($"a service account named '{name}' exists already");
        }
        var key = TokenFormat.New(TokenFormat.ServiceAccountKeyPrefix);
        var row = new ServiceAccountRow { Id = TokenFormat.NewId("sa_"), Name = name, KeyHash = TokenFormat.Hash(key), CreatedAt = Now(time) };
        await UniqueAsync(() => store.InsertServiceAccountAsync(row, ct), $"a service account named '{name}' exists already");
        await AuditAsync(http, store, time, "service-account.create", name, ct);
        return Results.Created($"/api/v1/service-accounts/{row.Id}", new ServiceAccountCreated(new ServiceAccountView(row.Id, row.Name, Time(row.CreatedAt)), key));
    }

    private static async Task<IResult> RemoveServiceAccountAsync(string account, ControllerStore store, SessionRegistry sessions, ControllerOptions options, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindServiceAccountAsync(account, ct) ?? throw ApiException.NotFound("service account", account);
        await store.DeleteServiceAccountAsync(row.Id, Now(time), RevokedUntil(options, time), ct);
        await AuditAsync(http, store, time, "service-account.remove", row.Name, ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    // ---- devices

    private static async Task<IResult> ListDevicesAsync(ControllerStore store, ControllerOptions options, TimeProvider time, CancellationToken ct)
    {
        // Online on whichever replica holds the session: it touches the row every heartbeat.
        var fresh = Now(time) - (long)(options.HeartbeatInterval * 3).TotalMilliseconds;
        return Results.Ok((await store.ListDevicesAsync(ct)).Select(d =>
        {
            var online = d.SessionSeen >= fresh;
            PathStatus[] paths = online && d.Paths is { } json ? JsonSerializer.Deserialize<PathStatus[]>(json, RelayDirectory.StatusJson) ?? [] : [];
            return new DeviceView(d.Id, d.Name, d.OwnerKind, d.OwnerName ?? d.OwnerId, online, Time(d.CreatedAt), Time(d.TokenExpiresAt), paths);
        }));
    }

    /// <summary>Removes a device: its token stops working, its session ends, and connectors close its flows and refuse its certificate.</summary>
    private static async Task<IResult> RemoveDeviceAsync(string device, ControllerStore store, SessionRegistry sessions, ControllerOptions options, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        if (!await store.DeleteDeviceAsync(device, Now(time), RevokedUntil(options, time), ct))
        {
            throw ApiException.NotFound("device", device);
        }
        await AuditAsync(http, store, time, "device.remove", device, ct);
        sessions.NotifyPolicyChanged();
        await sessions.DisconnectAsync(new PeerIdentity(PeerIdentity.Device, device).ToString(), "device removed by an administrator");
        return Results.NoContent();
    }

    // A removed device's certificate is refused until it would have expired anyway (plus the clock tolerance).
    private static long RevokedUntil(ControllerOptions options, TimeProvider time)
        => time.GetUtcNow().Add(options.CertificateLifetime).AddMinutes(5).ToUnixTimeMilliseconds();

    // ---- policies

    private static async Task<IResult> GrantAsync(PolicyGrantRequest request, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        if ((request.Group is null) == (request.ServiceAccount is null))
        {
            throw ApiException.BadRequest("name exactly one grantee: a group or a service account");
        }
        var resource = await store.FindResourceAsync(request.Resource ?? "", ct) ?? throw ApiException.NotFound("resource", request.Resource ?? "");
        string? groupId = null, accountId = null, grantee;
        if (request.Group is not null)
        {
            var g = await store.FindGroupAsync(request.Group, ct) ?? throw ApiException.NotFound("group", request.Group);
            groupId = g.Id;
            grantee = $"group {g.Name}";
        }
        else
        {
            var s = await store.FindServiceAccountAsync(request.ServiceAccount!, ct) ?? throw ApiException.NotFound("service account", request.ServiceAccount!);
            accountId = s.Id;
            grantee = $"service account {s.Name}";
        }
        var existing = (await store.ListPoliciesAsync(ct)).FirstOrDefault(p => p.ResourceId == resource.Id && p.GroupId == groupId && p.ServiceAccountId == accountId);
        if (existing is not null)
        {
            throw ApiException.Conflict($"{grantee} is granted resource '{resource.Name}' already (policy {existing.Id})");
        }
        var id = TokenFormat.NewId("po_");
        await store.InsertPolicyAsync(id, resource.Id, groupId, accountId, Now(time), ct);
        await AuditAsync(http, store, time, "policy.grant", $"{resource.Name} to {grantee}", ct);
        sessions.NotifyPolicyChanged();
        var view = (await store.ListPoliciesAsync(ct)).First(p => p.Id == id);
        return Results.Created($"/api/v1/policies/{id}", ToView(view));
    }

    private static async Task<IResult> RevokeAsync(string policy, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = (await store.ListPoliciesAsync(ct)).FirstOrDefault(p => p.Id == policy) ?? throw ApiException.NotFound("policy", policy);
        await store.DeletePolicyAsync(row.Id, ct);
        await AuditAsync(http, store, time, "policy.revoke", $"{row.ResourceName} from {(row.GroupName is not null ? "group " + row.GroupName : "service account " + row.ServiceAccountName)}", ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    // ---- helpers

    private static async Task<NetworkRow> RequireNetworkAsync(ControllerStore store, string network, CancellationToken ct)
        => await store.FindNetworkAsync(network, ct) ?? throw ApiException.NotFound("network", network);

    internal static string RequireName(string? name, string what)
    {
        if (string.IsNullOrWhiteSpace(name) || !NamePattern().IsMatch(name))
        {
            throw ApiException.BadRequest($"{what} name '{name}' is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit");
        }
        return name;
    }

    private static void RequirePassword(string? password, int minimum, string what)
    {
        if (string.IsNullOrEmpty(password) || password.Length < minimum)
        {
            throw ApiException.BadRequest($"{what} must be at least {minimum} characters");
        }
    }

    internal static string? ValidateLocation(string? location)
    {
        if (string.IsNullOrWhiteSpace(location))
        {
            return null;
        }
        return Core.Model.GeoLocation.TryParse(location, out var parsed, out var error) ? parsed.Text : throw ApiException.BadRequest(error);
    }

    internal static async Task UniqueAsync(Func<Task> insert, string conflict)
    {
        try
        {
            await insert();
        }
        catch (DbException e) when (IsUniqueViolation(e))
        {
            // Lost a race with another request: same answer as the check before.
            throw ApiException.Conflict(conflict);
        }
    }

    private static bool IsUniqueViolation(DbException e)
        => e is Microsoft.Data.Sqlite.SqliteException { SqliteErrorCode: 19 } || e is Npgsql.PostgresException { SqlState: "23505" };

    internal static string ActorOf(HttpContext http) => http.Items[AdminAuthenticationMiddleware.ActorItem] as string ?? "admin";

    internal static async Task AuditAsync(HttpContext http, ControllerStore store, TimeProvider time, string action, string target, CancellationToken ct)
    {
        var actor = ActorOf(http);
        await store.AddAuditAsync(actor, action, target, Now(time), ct);
        var logger = http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Ferry.Controller.Admin");
        Log.AdminChange(logger, actor, action, target);
    }

    private static long Now(TimeProvider time) => time.GetUtcNow().ToUnixTimeMilliseconds();

    internal static DateTimeOffset Time(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    private static string? NullIfEmpty(string? value) => string.IsNullOrWhiteSpace(value) ? null : value.Trim();

    private static NetworkView ToView(NetworkRow n) => new(n.Id, n.Name, n.DnsServer, n.IsExit != 0, (int)n.Connectors, (int)n.Resources, Time(n.CreatedAt),
        n.MfaIdleTimeoutS is not null, n.MfaIdleTimeoutS is { } idle ? (int)idle : null);

    private static ResourceView ToView(ResourceRow r) => new(r.Id, r.Name, r.NetworkName, r.Address, r.Kind, r.Tcp, r.Udp, Time(r.CreatedAt));

    private static PolicyView ToView(PolicyRow p) => new(p.Id, p.ResourceName, p.NetworkName, p.GroupName, p.ServiceAccountName, Time(p.CreatedAt));
}
