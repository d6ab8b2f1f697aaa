using Ferry.Core.ControlPlane;
using Ferry.Core.Tokens;

namespace Ferry.Core.Api;

// The admin API's bodies, shared by the controller and the 'ferry admin' CLI so the two cannot drift apart.

/// <summary>Body of POST /api/v1/networks.</summary>
/// <remarks>With <paramref name="RequireMfa"/>, devices need a fresh second factor, which lapses after <paramref name="MfaIdleTimeoutSeconds"/> without traffic (default 900).</remarks>
public sealed record NetworkCreateRequest(string Name, string? DnsServer = null, bool Exit = false, bool RequireMfa = false, int? MfaIdleTimeoutSeconds = null);

/// <summary>Changes a network's settings; a null field stays as it is, an empty DNS server clears it.</summary>
public sealed record NetworkUpdateRequest(string? DnsServer = null, bool? Exit = null, bool? RequireMfa = null, int? MfaIdleTimeoutSeconds = null);

/// <summary>A remote network as the admin API shows it.</summary>
/// <remarks><paramref name="MfaIdleTimeoutSeconds"/> is set only when <paramref name="RequireMfa"/> is.</remarks>
public sealed record NetworkView(string Id, string Name, string? DnsServer, bool Exit, int Connectors, int Resources, DateTimeOffset CreatedAt, bool RequireMfa = false, int? MfaIdleTimeoutSeconds = null);

/// <summary>Body of POST /api/v1/connectors.</summary>
public sealed record ConnectorProvisionRequest(string Network, string? Name = null, string? Location = null);

/// <summary>Provisioning's answer: the connector, its token pair (shown once) and commands to run it.</summary>
public sealed record ConnectorProvisioned(ConnectorView Connector, TokenFile Tokens, DeployInstructions Deploy);

/// <summary>Ready-to-paste ways of running a provisioned daemon.</summary>
public sealed record DeployInstructions(string Plain, string Systemd, string Container, string Helm);

/// <summary>A connector with every detail the controller keeps about it.</summary>
public sealed record ConnectorView
{
    public required string Id { get; init; }
    public required string Name { get; init; }
    public required string Network { get; init; }
    public string? Location { get; init; }
    /// <summary>"online" or "offline".</summary>
    public required string State { get; init; }
    public DateTimeOffset? OnlineSince { get; init; }
    public DateTimeOffset? OfflineSince { get; init; }
    public long? UptimeSeconds { get; init; }
    public long? DowntimeSeconds { get; init; }
    public long? TimeOffsetMs { get; init; }
    /// <summary>"ok", "warning" (beyond ±3 s) or "refused" (beyond ±5 s); null until measured.</summary>
    public string? TimeOffsetStatus { get; init; }
    public required StunStatusView Stun { get; init; }
    public string? Hostname { get; init; }
    public string? PublicIp { get; init; }
    public string[] PrivateIps { get; init; } = [];
    public string? Version { get; init; }
    public DateTimeOffset? LastSeen { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public StateChangeView[] History { get; init; } = [];
    public EventView[] Events { get; init; } = [];
    /// <summary>Client connections it serves, as it last reported (clients spread across a network's connectors by this).</summary>
    public int? Clients { get; init; }
    /// <summary>Flows it carries, as it last reported.</summary>
    public int? Flows { get; init; }
    /// <summary>What it found when it last checked each resource of its network.</summary>
    public ResourceCheckView[] Resources { get; init; } = [];
    /// <summary>The controller replica holding its session (its --replica-id), while online.</summary>
    public string? Replica { get; init; }
}

/// <summary>One resource as a connector found it: "ok", "unresolvable", "unreachable" or "unchecked", and what it saw.</summary>
public sealed record ResourceCheckView(string Resource, string Status, string? Detail);

/// <summary>Result of the connector's STUN discovery: "not-run", "ok" or "failed".</summary>
public sealed record StunStatusView(string Status, string? MappedAddress = null, string[]? Relays = null, string? Error = null, DateTimeOffset? At = null);

/// <summary>One online/offline transition.</summary>
public sealed record StateChangeView(string State, DateTimeOffset At, string? Reason);

/// <summary>One entry of a daemon's event log (token reuse, clock refusals, sessions).</summary>
public sealed record EventView(DateTimeOffset At, string Kind, string Message);

/// <summary>Body of POST /api/v1/resources.</summary>
public sealed record ResourceCreateRequest(string Network, string Address, string? Name = null, string? Tcp = null, string? Udp = null);

/// <summary>
/// A resource: its address (DNS name, wildcard, IP or CIDR) and the ports allowed per protocol ("all", "none", or "22,8000-8100");
/// <paramref name="Warning"/> says when the online connectors of its network do not all resolve or reach it alike.
/// </summary>
public sealed record ResourceView(string Id, string Name, string Network, string Address, string Kind, string Tcp, string Udp, DateTimeOffset CreatedAt, string? Warning = null);

/// <summary>Body of PATCH /api/v1/resources/{resource}: what to change; a null field stays as it is.</summary>
public sealed record ResourceUpdateRequest(string? Name = null, string? Address = null, string? Tcp = null, string? Udp = null);

/// <summary>Body of PATCH /api/v1/users/{user}: a new password.</summary>
public sealed record UserUpdateRequest(string Password);

/// <summary>Body of POST /api/v1/operators: an operator of the admin console.</summary>
public sealed record OperatorCreateRequest(string Name, string Password);

/// <summary>An operator of the admin console.</summary>
public sealed record OperatorView(string Id, string Name, DateTimeOffset CreatedAt, DateTimeOffset? LastSignIn);

/// <summary>A new operator with its TOTP secret, shown this once: typed into an authenticator app, or opened as the otpauth:// URI.</summary>
public sealed record OperatorCreated(OperatorView Operator, string TotpSecret, string TotpUri);

/// <summary>Body of POST /api/v1/users.</summary>
public sealed record UserCreateRequest(string Name, string Password);

/// <summary>A user and the groups it belongs to.</summary>
public sealed record UserView(string Id, string Name, string[] Groups, DateTimeOffset CreatedAt, bool MfaEnrolled = false);

/// <summary>A user with its second factor and its recent security events (failed second-factor codes and the like).</summary>
public sealed record UserDetailView(string Id, string Name, string[] Groups, DateTimeOffset CreatedAt, bool MfaEnrolled, DateTimeOffset? MfaEnrolledAt, EventView[] Events);

/// <summary>A user's new TOTP second factor, shown this once: typed into an authenticator app, or opened as the otpauth:// URI.</summary>
public sealed record UserMfaEnrolled(string User, string TotpSecret, string TotpUri);

/// <summary>Body of POST /v1/device/mfa (device token as bearer): a code from the user's authenticator app.</summary>
public sealed record DeviceMfaRequest(string Code);

/// <summary>A confirmed second factor: which networks it unlocks for this device, and after how many seconds without traffic each locks again.</summary>
public sealed record DeviceMfaResult(string Device, MfaNetworkView[] Networks);

/// <summary>One network a second factor unlocked, and its inactivity threshold.</summary>
public sealed record MfaNetworkView(string Network, int IdleTimeoutSeconds);

/// <summary>Body of POST /api/v1/groups.</summary>
public sealed record GroupCreateRequest(string Name);

/// <summary>Body of POST /api/v1/groups/{group}/members.</summary>
public sealed record GroupMemberRequest(string User);

/// <summary>A group and its members.</summary>
public sealed record GroupView(string Id, string Name, string[] Members, DateTimeOffset CreatedAt);

/// <summary>Body of POST /api/v1/service-accounts.</summary>
public sealed record ServiceAccountCreateRequest(string Name);

/// <summary>A service account (a headless client identity).</summary>
public sealed record ServiceAccountView(string Id, string Name, DateTimeOffset CreatedAt);

/// <summary>A signed-in client device: whose it is and whether it holds a session now.</summary>
/// <remarks><paramref name="Paths"/>: what the device's client last reported of its path to each connector (direct or relayed, round trips, bytes).</remarks>
public sealed record DeviceView(string Id, string Name, string OwnerKind, string Owner, bool Online, DateTimeOffset CreatedAt, DateTimeOffset SessionExpiresAt, Ferry.Core.ControlPlane.PathStatus[]? Paths = null);

/// <summary>A new service account with its key, which is shown this once and stored only as a hash.</summary>
public sealed record ServiceAccountCreated(ServiceAccountView Account, string Key);

/// <summary>Body of POST /api/v1/policies: grant a group or a service account access to one resource.</summary>
public sealed record PolicyGrantRequest(string Resource, string? Group = null, string? ServiceAccount = null);

/// <summary>One grant.</summary>
public sealed record PolicyView(string Id, string Resource, string Network, string? Group, string? ServiceAccount, DateTimeOffset CreatedAt);

/// <summary>Body of POST /v1/client/login: a user's password or a service account's key, and the device's certificate request.</summary>
public sealed record ClientLoginRequest(string? User, string? Password, string? ServiceAccountKey, string DeviceName, string? CsrPem);

/// <summary>What a signed-in client gets: its device identity, the token for its session, and what it may reach.</summary>
public sealed record ClientLoginResult(string DeviceId, string Identity, string DeviceToken, DateTimeOffset DeviceTokenExpiresAt, ResourceGrant[] Resources);

/// <summary>Body of POST /v1/daemon/refresh.</summary>
public sealed record TokenRefreshRequest(string RefreshToken);

/// <summary>One audit log entry: who changed what, when.</summary>
public sealed record AuditView(DateTimeOffset At, string Actor, string Action, string Target);

/// <summary>One security event: a refused credential, session or sign-in (GET /api/v1/security-events).</summary>
public sealed record SecurityEventView(DateTimeOffset At, string Kind, string Subject, string? Source, string Message);

/// <summary>Body of POST /api/v1/relays.</summary>
public sealed record RelayProvisionRequest(string? Name = null, string? Location = null);

/// <summary>Provisioning's answer for a relay: the relay, its token pair (shown once) and commands to run it.</summary>
public sealed record RelayProvisioned(RelayView Relay, TokenFile Tokens, DeployInstructions Deploy);

/// <summary>A relay with its health and load as it last reported them.</summary>
public sealed record RelayView
{
    public required string Id { get; init; }
    public required string Name { get; init; }
    public string? Location { get; init; }
    public required string State { get; init; }
    public DateTimeOffset? OnlineSince { get; init; }
    public DateTimeOffset? OfflineSince { get; init; }
    public long? TimeOffsetMs { get; init; }
    public string? Hostname { get; init; }
    public string? PublicIp { get; init; }
    public string? Version { get; init; }
    public DateTimeOffset? LastSeen { get; init; }
    public string[] TcpEndpoints { get; init; } = [];
    public string[] StunEndpoints { get; init; } = [];
    public int Peers { get; init; }
    public long BytesIn { get; init; }
    public long BytesOut { get; init; }
    public long PacketsIn { get; init; }
    public long PacketsOut { get; init; }
    public double PacketsPerSecond { get; init; }
    public long Refused { get; init; }
    public StateChangeView[] History { get; init; } = [];
    public EventView[] Events { get; init; } = [];
}
