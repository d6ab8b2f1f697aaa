namespace Ferry.Controller.Storage;

// Rows as stored; Dapper fills them by column name. Times are Unix milliseconds.

/// <summary>A remote network row.</summary>
public sealed class NetworkRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string? DnsServer { get; set; }
    public long IsExit { get; set; }
    public long CreatedAt { get; set; }

    /// <summary>Seconds without traffic after which a device's second factor lapses; null when the network requires none.</summary>
    public long? MfaIdleTimeoutS { get; set; }
    public long Connectors { get; set; }
    public long Resources { get; set; }
}

/// <summary>A connector or relay row with its live state.</summary>
public sealed class DaemonRow
{
    public string Id { get; set; } = "";
    public string Kind { get; set; } = "";
    public string Name { get; set; } = "";
    public string? NetworkId { get; set; }
    public string? NetworkName { get; set; }
    public string? Location { get; set; }
    public long CreatedAt { get; set; }
    public string State { get; set; } = "offline";
    public long? OnlineSince { get; set; }
    public long? OfflineSince { get; set; }
    public long? LastSeen { get; set; }
    public long? TimeOffsetMs { get; set; }
    public string? Hostname { get; set; }
    public string? PublicIp { get; set; }
    public string? PrivateIps { get; set; }
    public string? Version { get; set; }
    public string? SessionId { get; set; }
    public string? SessionReplica { get; set; }
    public long? SessionStartedAt { get; set; }
    public string? SessionFrom { get; set; }
    public string StunStatus { get; set; } = "not-run";
    public string? StunMapped { get; set; }
    public string? StunRelays { get; set; }
    public string? StunError { get; set; }
    public long? StunAt { get; set; }

    /// <summary>What the daemon last reported about itself (a relay's endpoints and load), as JSON.</summary>
    public string? Status { get; set; }
}

/// <summary>One online/offline transition.</summary>
public sealed class StateChangeRow
{
    public string State { get; set; } = "";
    public long At { get; set; }
    public string? Reason { get; set; }
}

/// <summary>One event of a daemon's log.</summary>
public sealed class EventRow
{
    public long At { get; set; }
    public string Kind { get; set; } = "";
    public string Message { get; set; } = "";
}

/// <summary>A token pair, by hash. State: active, pending (issued, not yet confirmed by use), used, revoked.</summary>
public sealed class TokenRow
{
    public string Id { get; set; } = "";
    public string OwnerId { get; set; } = "";
    public string AccessHash { get; set; } = "";
    public long AccessExpiresAt { get; set; }
    public string RefreshHash { get; set; } = "";
    public string State { get; set; } = "";
    public string? ParentId { get; set; }
    public long CreatedAt { get; set; }
    public long? UsedAt { get; set; }
}

/// <summary>A resource row.</summary>
public sealed class ResourceRow
{
    public string Id { get; set; } = "";
    public string NetworkId { get; set; } = "";
    public string NetworkName { get; set; } = "";
    public string Name { get; set; } = "";
    public string Address { get; set; } = "";
    public string Kind { get; set; } = "";
    public string Tcp { get; set; } = "";
    public string Udp { get; set; } = "";
    public long CreatedAt { get; set; }
}

/// <summary>An operator of the admin console: password hash, TOTP secret (base32) and the last TOTP step used.</summary>
public sealed class OperatorRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string PasswordHash { get; set; } = "";
    public string TotpSecret { get; set; } = "";
    public long TotpLastStep { get; set; }
    public long CreatedAt { get; set; }
    public long? LastSignIn { get; set; }
}

/// <summary>A user row.</summary>
public sealed class UserRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string PasswordHash { get; set; } = "";
    public long CreatedAt { get; set; }
}

/// <summary>A group, user-group membership, service account or policy row: id, name and the ids it links.</summary>
public sealed class NamedRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public long CreatedAt { get; set; }
}

/// <summary>A group's member, or a user's group.</summary>
public sealed class MembershipRow
{
    public string GroupId { get; set; } = "";
    public string GroupName { get; set; } = "";
    public string UserId { get; set; } = "";
    public string UserName { get; set; } = "";
}

/// <summary>A service account row.</summary>
public sealed class ServiceAccountRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string KeyHash { get; set; } = "";
    public long CreatedAt { get; set; }
}

/// <summary>A policy row joined with the names it refers to.</summary>
public sealed class PolicyRow
{
    public string Id { get; set; } = "";
    public string ResourceId { get; set; } = "";
    public string ResourceName { get; set; } = "";
    public string NetworkName { get; set; } = "";
    public string? GroupId { get; set; }
    public string? GroupName { get; set; }
    public string? ServiceAccountId { get; set; }
    public string? ServiceAccountName { get; set; }
    public long CreatedAt { get; set; }
}

/// <summary>A signed-in client device.</summary>
public sealed class DeviceRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string OwnerKind { get; set; } = "";
    public string OwnerId { get; set; } = "";
    public string TokenHash { get; set; } = "";
    public long TokenExpiresAt { get; set; }
    public long CreatedAt { get; set; }
}

/// <summary>A device with its owner's name, as the admin API lists it.</summary>
public sealed class DeviceListRow
{
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public string OwnerKind { get; set; } = "";
    public string OwnerId { get; set; } = "";
    public string? OwnerName { get; set; }
    public long TokenExpiresAt { get; set; }
    public long CreatedAt { get; set; }
    /// <summary>When a replica last heard from its client session; null without one.</summary>
    public long? SessionSeen { get; set; }
    /// <summary>Its client's last path report (JSON).</summary>
    public string? Paths { get; set; }
}

/// <summary>An audit log row.</summary>
public sealed class AuditRow
{
    public long At { get; set; }
    public string Actor { get; set; } = "";
    public string Action { get; set; } = "";
    public string Target { get; set; } = "";
}

/// <summary>A user's TOTP second factor: the secret (base32) and the last step used, so a code is good once.</summary>
public sealed class UserTotpRow
{
    public string UserId { get; set; } = "";
    public string TotpSecret { get; set; } = "";
    public long TotpLastStep { get; set; }
    public long EnrolledAt { get; set; }
}

/// <summary>A device's live second factor for one network: when it was given and when the device last had traffic there.</summary>
public sealed class MfaSessionRow
{
    public string DeviceId { get; set; } = "";
    public string NetworkId { get; set; } = "";
    public long ConfirmedAt { get; set; }
    public long LastActivity { get; set; }
}

/// <summary>A security event: a refused credential or session, kept apart from daemon logs so it outlives what it names.</summary>
public sealed class SecurityEventRow
{
    public long At { get; set; }
    public string Kind { get; set; } = "";

    /// <summary>What the attempt was about: a daemon or device id, an operator or user name, or "admin-api".</summary>
    public string Subject { get; set; } = "";

    /// <summary>The address the attempt came from, when known.</summary>
    public string? Source { get; set; }

    public string Message { get; set; } = "";
}
