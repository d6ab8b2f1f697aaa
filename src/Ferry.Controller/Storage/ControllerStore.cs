using System.Data.Common;
using Dapper;

namespace Ferry.Controller.Storage;

/// <summary>Every read and write of the controller's state; the same SQL runs on SQLite and PostgreSQL.</summary>
public sealed class ControllerStore(Database database)
{
    private const string DaemonColumns = """
        d.id, d.kind, d.name, d.network_id, n.name AS network_name, d.location, d.created_at, d.state, d.online_since,
        d.offline_since, d.last_seen, d.time_offset_ms, d.hostname, d.public_ip, d.private_ips, d.version, d.session_id,
        d.session_replica, d.session_started_at, d.session_from, d.stun_status, d.stun_mapped, d.stun_relays, d.stun_error, d.stun_at, d.status
        """;

    private const string ResourceColumns = "r.id, r.network_id, n.name AS network_name, r.name, r.address, r.kind, r.tcp, r.udp, r.created_at";

    private const string PolicyColumns = """
        p.id, p.resource_id, r.name AS resource_name, n.name AS network_name, p.group_id, g.name AS group_name,
        p.service_account_id, s.name AS service_account_name, p.created_at
        """;

    private const string PolicyJoins = """
        FROM policies p JOIN resources r ON r.id = p.resource_id JOIN networks n ON n.id = r.network_id
        LEFT JOIN user_groups g ON g.id = p.group_id LEFT JOIN service_accounts s ON s.id = p.service_account_id
        """;

    public Database Database => database;

    private Task<DbConnection> OpenAsync(CancellationToken ct) => database.OpenAsync(ct);

    /// <summary>Runs several statements as one transaction, so a crash leaves all or nothing.</summary>
    public async Task<T> InTransactionAsync<T>(Func<DbConnection, DbTransaction, Task<T>> work, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        var result = await work(c, tx);
        await tx.CommitAsync(ct);
        return result;
    }

    // ---- settings

    public async Task<string?> GetSettingAsync(string key, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<string>("SELECT value FROM settings WHERE key = @key", new { key });
    }

    /// <summary>Stores the value unless one is there already; returns whichever is stored (so concurrent replicas agree).</summary>
    public async Task<string> GetOrAddSettingAsync(string key, string value, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO settings (key, value) VALUES (@key, @value) ON CONFLICT (key) DO NOTHING", new { key, value });
        return await c.QuerySingleAsync<string>("SELECT value FROM settings WHERE key = @key", new { key });
    }

    public async Task SetSettingAsync(string key, string value, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO settings (key, value) VALUES (@key, @value) ON CONFLICT (key) DO UPDATE SET value = excluded.value", new { key, value });
    }

    // ---- networks

    /// <summary>Adds a network with its MFA setting (<see cref="NetworkRow.MfaIdleTimeoutS"/>) in one transaction, so a crash never leaves it unprotected.</summary>
    public async Task InsertNetworkAsync(NetworkRow row, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("INSERT INTO networks (id, name, dns_server, is_exit, created_at) VALUES (@Id, @Name, @DnsServer, @IsExit, @CreatedAt)", row, tx);
            if (row.MfaIdleTimeoutS is not null)
            {
                await SetNetworkMfaAsync(c, tx, row.Id, row.MfaIdleTimeoutS);
            }
            return 0;
        }, ct);
    }

    public async Task<IReadOnlyList<NetworkRow>> ListNetworksAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<NetworkRow>("""
            SELECT n.id, n.name, n.dns_server, n.is_exit, n.created_at, m.idle_timeout_s AS mfa_idle_timeout_s,
              (SELECT COUNT(*) FROM daemons d WHERE d.network_id = n.id) AS connectors,
              (SELECT COUNT(*) FROM resources r WHERE r.network_id = n.id) AS resources
            FROM networks n LEFT JOIN network_mfa m ON m.network_id = n.id ORDER BY n.name
            """)).AsList();
    }

    public async Task<NetworkRow?> FindNetworkAsync(string nameOrId, CancellationToken ct)
        => (await ListNetworksAsync(ct)).FirstOrDefault(n => n.Id == nameOrId || n.Name == nameOrId);

    /// <summary>Changes a network's DNS server, exit flag and MFA setting together (see <see cref="SetNetworkMfaAsync(string, long?, CancellationToken)"/>).</summary>
    public async Task UpdateNetworkAsync(string id, string? dnsServer, bool isExit, long? mfaIdleTimeoutS, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("UPDATE networks SET dns_server = @dnsServer, is_exit = @exit WHERE id = @id", new { id, dnsServer, exit = isExit ? 1 : 0 }, tx);
            await SetNetworkMfaAsync(c, tx, id, mfaIdleTimeoutS);
            return 0;
        }, ct);
    }

    public async Task DeleteNetworkAsync(string id, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM mfa_sessions WHERE network_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM network_mfa WHERE network_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM networks WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    /// <summary>Makes a network require a second factor that lapses after <paramref name="idleTimeoutS"/> s without traffic, or (null) require none, ending its devices' second factors.</summary>
    public async Task SetNetworkMfaAsync(string id, long? idleTimeoutS, CancellationToken ct)
        => await InTransactionAsync(async (c, tx) =>
        {
            await SetNetworkMfaAsync(c, tx, id, idleTimeoutS);
            return 0;
        }, ct);

    private static async Task SetNetworkMfaAsync(DbConnection c, DbTransaction tx, string id, long? idleTimeoutS)
    {
        if (idleTimeoutS is { } timeout)
        {
            await c.ExecuteAsync("""
                INSERT INTO network_mfa (network_id, idle_timeout_s) VALUES (@id, @timeout)
                ON CONFLICT (network_id) DO UPDATE SET idle_timeout_s = excluded.idle_timeout_s
                """, new { id, timeout }, tx);
        }
        else
        {
            await c.ExecuteAsync("DELETE FROM network_mfa WHERE network_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM mfa_sessions WHERE network_id = @id", new { id }, tx);
        }
    }

    // ---- second factors of users, and devices' live second factors per network

    public async Task<HashSet<string>> ListUsersWithTotpAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return [.. await c.QueryAsync<string>("SELECT user_id FROM user_totp")];
    }

    public async Task<UserTotpRow?> GetUserTotpAsync(string userId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<UserTotpRow>("SELECT * FROM user_totp WHERE user_id = @userId", new { userId });
    }

    /// <summary>Enrols (or replaces) a user's TOTP secret; a replaced one stops working at once, and so do the second factors it gave.</summary>
    public async Task SetUserTotpAsync(string userId, string? secret, long now, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM user_totp WHERE user_id = @userId", new { userId }, tx);
            await c.ExecuteAsync("DELETE FROM mfa_sessions WHERE device_id IN (SELECT id FROM devices WHERE owner_kind = 'user' AND owner_id = @userId)", new { userId }, tx);
            if (secret is not null)
            {
                await c.ExecuteAsync("INSERT INTO user_totp (user_id, totp_secret, totp_last_step, enrolled_at) VALUES (@userId, @secret, 0, @now)", new { userId, secret, now }, tx);
            }
            return 0;
        }, ct);
    }

    /// <summary>Marks a user's TOTP step used; false when it or a later one was used already (a replayed code, or a race between replicas).</summary>
    public async Task<bool> ClaimUserTotpStepAsync(string userId, long step, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("UPDATE user_totp SET totp_last_step = @step WHERE user_id = @userId AND totp_last_step < @step", new { userId, step }) == 1;
    }

    /// <summary>Starts (or renews) a device's second factor for each of <paramref name="networkIds"/>, with no traffic yet.</summary>
    public async Task StartMfaSessionsAsync(string deviceId, IEnumerable<string> networkIds, long now, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            foreach (var networkId in networkIds)
            {
                await c.ExecuteAsync("""
                    INSERT INTO mfa_sessions (device_id, network_id, confirmed_at, last_activity) VALUES (@deviceId, @networkId, @now, @now)
                    ON CONFLICT (device_id, network_id) DO UPDATE SET confirmed_at = excluded.confirmed_at, last_activity = excluded.last_activity
                    """, new { deviceId, networkId, now }, tx);
            }
            return 0;
        }, ct);
    }

    public async Task<IReadOnlyList<MfaSessionRow>> ListMfaSessionsAsync(string? deviceId, string? networkId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<MfaSessionRow>("""
            SELECT * FROM mfa_sessions WHERE (@deviceId IS NULL OR device_id = @deviceId) AND (@networkId IS NULL OR network_id = @networkId)
            ORDER BY device_id, network_id
            """, new { deviceId, networkId })).AsList();
    }

    /// <summary>Devices with a second factor for <paramref name="networkId"/> that had traffic since <paramref name="activeSince"/>, with their owners ("user/us_…").</summary>
    public async Task<IReadOnlyList<(string DeviceId, string Owner)>> ListMfaDevicesOfNetworkAsync(string networkId, long activeSince, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        var rows = await c.QueryAsync<(string, string, string)>("""
            SELECT d.id, d.owner_kind, d.owner_id FROM mfa_sessions m JOIN devices d ON d.id = m.device_id
            WHERE m.network_id = @networkId AND m.last_activity >= @activeSince ORDER BY d.id
            """, new { networkId, activeSince });
        return [.. rows.Select(r => (r.Item1, $"{r.Item2}/{r.Item3}"))];
    }

    /// <summary>Records traffic of <paramref name="deviceIds"/> in <paramref name="networkId"/>, which keeps their second factors there alive.</summary>
    public async Task TouchMfaSessionsAsync(string networkId, IReadOnlyCollection<string> deviceIds, long now, CancellationToken ct)
    {
        if (deviceIds.Count == 0)
        {
            return;
        }
        await using var c = await OpenAsync(ct);
        // One statement per device keeps the SQL the same for both engines (no array parameters in SQLite).
        foreach (var deviceId in deviceIds)
        {
            await c.ExecuteAsync("UPDATE mfa_sessions SET last_activity = @now WHERE network_id = @networkId AND device_id = @deviceId AND last_activity < @now",
                new { networkId, deviceId, now });
        }
    }

    /// <summary>Ends one second factor if it still had no traffic since <paramref name="idleBefore"/>; false when traffic came meanwhile or another replica ended it.</summary>
    public async Task<bool> EndIdleMfaSessionAsync(string deviceId, string networkId, long idleBefore, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("DELETE FROM mfa_sessions WHERE device_id = @deviceId AND network_id = @networkId AND last_activity < @idleBefore",
            new { deviceId, networkId, idleBefore }) == 1;
    }

    // ---- daemons (connectors, relays)

    public async Task InsertDaemonAsync(DaemonRow row, TokenRow tokens, string actor, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("""
                INSERT INTO daemons (id, kind, name, network_id, location, created_at, state, offline_since)
                VALUES (@Id, @Kind, @Name, @NetworkId, @Location, @CreatedAt, 'offline', NULL)
                """, row, tx);
            await InsertTokenAsync(c, tx, tokens);
            await c.ExecuteAsync("INSERT INTO events (subject_id, at, kind, message) VALUES (@id, @at, 'provisioned', @message)",
                new { id = row.Id, at = row.CreatedAt, message = $"provisioned by {actor}" }, tx);
            return 0;
        }, ct);
    }

    public async Task<IReadOnlyList<DaemonRow>> ListDaemonsAsync(string kind, string? networkId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<DaemonRow>($"""
            SELECT {DaemonColumns} FROM daemons d LEFT JOIN networks n ON n.id = d.network_id
            WHERE d.kind = @kind AND (@networkId IS NULL OR d.network_id = @networkId) ORDER BY d.name
            """, new { kind, networkId })).AsList();
    }

    public async Task<DaemonRow?> FindDaemonAsync(string kind, string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<DaemonRow>($"""
            SELECT {DaemonColumns} FROM daemons d LEFT JOIN networks n ON n.id = d.network_id
            WHERE d.kind = @kind AND (d.id = @nameOrId OR d.name = @nameOrId)
            """, new { kind, nameOrId });
    }

    public async Task<DaemonRow?> GetDaemonAsync(string id, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<DaemonRow>($"""
            SELECT {DaemonColumns} FROM daemons d LEFT JOIN networks n ON n.id = d.network_id WHERE d.id = @id
            """, new { id });
    }

    public async Task DeleteDaemonAsync(string id, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM tokens WHERE owner_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM daemon_state_changes WHERE daemon_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM events WHERE subject_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM daemons WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    /// <summary>Claims the daemon for a new session unless another live session holds it; returns the holder when refused.</summary>
    public async Task<DaemonRow?> TryClaimSessionAsync(string id, string sessionId, string replica, string from, long now, long staleBefore, CancellationToken ct)
    {
        return await InTransactionAsync(async (c, tx) =>
        {
            // The conditional UPDATE is the lock: of two processes racing with the same tokens only one row update wins.
            var claimed = await c.ExecuteAsync("""
                UPDATE daemons SET session_id = @sessionId, session_replica = @replica, session_started_at = @now, session_from = @from, last_seen = @now
                WHERE id = @id AND (session_id IS NULL OR last_seen IS NULL OR last_seen < @staleBefore)
                """, new { id, sessionId, replica, now, from, staleBefore }, tx);
            if (claimed == 1)
            {
                return null;
            }
            return await c.QuerySingleOrDefaultAsync<DaemonRow>($"""
                SELECT {DaemonColumns} FROM daemons d LEFT JOIN networks n ON n.id = d.network_id WHERE d.id = @id
                """, new { id }, tx);
        }, ct);
    }

    public async Task MarkOnlineAsync(string id, string sessionId, string hostname, string privateIps, string version, string publicIp, long offsetMs, long now, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("""
                UPDATE daemons SET state = 'online', online_since = @now, offline_since = NULL, last_seen = @now, time_offset_ms = @offsetMs,
                  hostname = @hostname, private_ips = @privateIps, version = @version, public_ip = @publicIp
                WHERE id = @id AND session_id = @sessionId
                """, new { id, sessionId, hostname, privateIps, version, publicIp, offsetMs, now }, tx);
            await c.ExecuteAsync("INSERT INTO daemon_state_changes (daemon_id, state, at, reason) VALUES (@id, 'online', @now, @reason)",
                new { id, now, reason = $"session from {publicIp}" }, tx);
            return 0;
        }, ct);
    }

    public async Task<bool> TouchAsync(string id, string sessionId, long offsetMs, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("UPDATE daemons SET last_seen = @now, time_offset_ms = @offsetMs WHERE id = @id AND session_id = @sessionId",
            new { id, sessionId, offsetMs, now }) == 1;
    }

    /// <summary>Ends a session: releases the claim and, if the daemon was online under it, records the transition to offline.</summary>
    public async Task MarkOfflineAsync(string id, string sessionId, string reason, long now, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            var wasOnline = await c.ExecuteAsync("""
                UPDATE daemons SET state = 'offline', offline_since = @now, session_id = NULL
                WHERE id = @id AND session_id = @sessionId AND state = 'online'
                """, new { id, sessionId, now }, tx);
            if (wasOnline == 1)
            {
                await c.ExecuteAsync("INSERT INTO daemon_state_changes (daemon_id, state, at, reason) VALUES (@id, 'offline', @now, @reason)",
                    new { id, now, reason }, tx);
            }
            else
            {
                await c.ExecuteAsync("UPDATE daemons SET session_id = NULL WHERE id = @id AND session_id = @sessionId", new { id, sessionId }, tx);
            }
            return 0;
        }, ct);
    }

    /// <summary>Online daemons whose session another replica held and stopped touching before <paramref name="staleBefore"/>.</summary>
    public async Task<IReadOnlyList<DaemonRow>> ListStaleSessionsAsync(string replica, long staleBefore, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<DaemonRow>($"""
            SELECT {DaemonColumns} FROM daemons d LEFT JOIN networks n ON n.id = d.network_id
            WHERE d.state = 'online' AND d.session_id IS NOT NULL AND d.session_replica <> @replica AND d.last_seen < @staleBefore
            """, new { replica, staleBefore })).AsList();
    }

    /// <summary>At start a replica owns no sessions, whatever the database says from before a crash.</summary>
    public async Task ReleaseSessionsOfReplicaAsync(string replica, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        var ids = (await c.QueryAsync<(string Id, string SessionId)>("SELECT id, session_id FROM daemons WHERE session_replica = @replica AND session_id IS NOT NULL", new { replica })).AsList();
        foreach (var (id, sessionId) in ids)
        {
            await MarkOfflineAsync(id, sessionId, "controller restarted", now, ct);
        }
    }

    public async Task UpdateStunAsync(string id, string status, string? mapped, string? relays, string? error, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("UPDATE daemons SET stun_status = @status, stun_mapped = @mapped, stun_relays = @relays, stun_error = @error, stun_at = @now WHERE id = @id",
            new { id, status, mapped, relays, error, now });
    }

    public async Task UpdateStatusAsync(string id, string status, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("UPDATE daemons SET status = @status WHERE id = @id", new { id, status });
    }

    public async Task<IReadOnlyList<StateChangeRow>> ListStateChangesAsync(string daemonId, int limit, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<StateChangeRow>("SELECT state, at, reason FROM daemon_state_changes WHERE daemon_id = @daemonId ORDER BY at DESC, id DESC LIMIT @limit",
            new { daemonId, limit })).AsList();
    }

    public async Task AddEventAsync(string subjectId, string kind, string message, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO events (subject_id, at, kind, message) VALUES (@subjectId, @now, @kind, @message)", new { subjectId, now, kind, message });
    }

    public async Task<IReadOnlyList<EventRow>> ListEventsAsync(string subjectId, int limit, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<EventRow>("SELECT at, kind, message FROM events WHERE subject_id = @subjectId ORDER BY at DESC, id DESC LIMIT @limit",
            new { subjectId, limit })).AsList();
    }

    // ---- tokens

    public static Task InsertTokenAsync(DbConnection c, DbTransaction tx, TokenRow row)
        => c.ExecuteAsync("""
            INSERT INTO tokens (id, owner_id, access_hash, access_expires_at, refresh_hash, state, parent_id, created_at, used_at)
            VALUES (@Id, @OwnerId, @AccessHash, @AccessExpiresAt, @RefreshHash, @State, @ParentId, @CreatedAt, @UsedAt)
            """, row, tx);

    public async Task<TokenRow?> FindTokenByAccessAsync(string accessHash, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<TokenRow>("SELECT * FROM tokens WHERE access_hash = @accessHash", new { accessHash });
    }

    public async Task<TokenRow?> FindTokenByRefreshAsync(string refreshHash, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<TokenRow>("SELECT * FROM tokens WHERE refresh_hash = @refreshHash", new { refreshHash });
    }

    // ---- resources

    public async Task InsertResourceAsync(ResourceRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO resources (id, network_id, name, address, kind, tcp, udp, created_at) VALUES (@Id, @NetworkId, @Name, @Address, @Kind, @Tcp, @Udp, @CreatedAt)", row);
    }

    public async Task UpdateResourceAsync(ResourceRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("UPDATE resources SET name = @Name, address = @Address, kind = @Kind, tcp = @Tcp, udp = @Udp WHERE id = @Id", row);
    }

    public async Task<IReadOnlyList<ResourceRow>> ListResourcesAsync(string? networkId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<ResourceRow>($"""
            SELECT {ResourceColumns} FROM resources r JOIN networks n ON n.id = r.network_id
            WHERE (@networkId IS NULL OR r.network_id = @networkId) ORDER BY n.name, r.name
            """, new { networkId })).AsList();
    }

    public async Task<ResourceRow?> FindResourceAsync(string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<ResourceRow>($"""
            SELECT {ResourceColumns} FROM resources r JOIN networks n ON n.id = r.network_id WHERE r.id = @nameOrId OR r.name = @nameOrId
            """, new { nameOrId });
    }

    public async Task DeleteResourceAsync(string id, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM policies WHERE resource_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM resources WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    // ---- console operators

    public async Task InsertOperatorAsync(OperatorRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO operators (id, name, password_hash, totp_secret, totp_last_step, created_at) VALUES (@Id, @Name, @PasswordHash, @TotpSecret, 0, @CreatedAt)", row);
    }

    public async Task<IReadOnlyList<OperatorRow>> ListOperatorsAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<OperatorRow>("SELECT * FROM operators ORDER BY name")).AsList();
    }

    public async Task<OperatorRow?> FindOperatorAsync(string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<OperatorRow>("SELECT * FROM operators WHERE id = @nameOrId OR name = @nameOrId", new { nameOrId });
    }

    public async Task<bool> DeleteOperatorAsync(string id, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("DELETE FROM operators WHERE id = @id", new { id }) == 1;
    }

    /// <summary>Marks TOTP step <paramref name="step"/> used; false when it or a later one was used already (a replayed code, or a race between replicas).</summary>
    public async Task<bool> ClaimTotpStepAsync(string id, long step, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("UPDATE operators SET totp_last_step = @step, last_sign_in = @now WHERE id = @id AND totp_last_step < @step", new { id, step, now }) == 1;
    }

    // ---- users and groups

    public async Task InsertUserAsync(UserRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO users (id, name, password_hash, created_at) VALUES (@Id, @Name, @PasswordHash, @CreatedAt)", row);
    }

    public async Task SetUserPasswordAsync(string id, string passwordHash, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("UPDATE users SET password_hash = @passwordHash WHERE id = @id", new { id, passwordHash });
    }

    public async Task<IReadOnlyList<UserRow>> ListUsersAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<UserRow>("SELECT * FROM users ORDER BY name")).AsList();
    }

    public async Task<UserRow?> FindUserAsync(string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<UserRow>("SELECT * FROM users WHERE id = @nameOrId OR name = @nameOrId", new { nameOrId });
    }

    /// <summary>Removes a user with its memberships; its devices are removed and revoked until <paramref name="until"/> (their certificates' last possible expiry).</summary>
    public async Task DeleteUserAsync(string id, long revokedAt, long until, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM group_members WHERE user_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM user_totp WHERE user_id = @id", new { id }, tx);
            await RevokeDevicesAsync(c, tx, "owner_id = @id", new { id, revokedAt, until });
            await c.ExecuteAsync("DELETE FROM users WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    public async Task InsertGroupAsync(NamedRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO user_groups (id, name, created_at) VALUES (@Id, @Name, @CreatedAt)", row);
    }

    public async Task<IReadOnlyList<NamedRow>> ListGroupsAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<NamedRow>("SELECT id, name, created_at FROM user_groups ORDER BY name")).AsList();
    }

    public async Task<NamedRow?> FindGroupAsync(string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<NamedRow>("SELECT id, name, created_at FROM user_groups WHERE id = @nameOrId OR name = @nameOrId", new { nameOrId });
    }

    public async Task DeleteGroupAsync(string id, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM group_members WHERE group_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM policies WHERE group_id = @id", new { id }, tx);
            await c.ExecuteAsync("DELETE FROM user_groups WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    public async Task<IReadOnlyList<MembershipRow>> ListMembershipsAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<MembershipRow>("""
            SELECT m.group_id, g.name AS group_name, m.user_id, u.name AS user_name
            FROM group_members m JOIN user_groups g ON g.id = m.group_id JOIN users u ON u.id = m.user_id ORDER BY g.name, u.name
            """)).AsList();
    }

    /// <summary>Adds a member; false when it was one already.</summary>
    public async Task<bool> AddMemberAsync(string groupId, string userId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("INSERT INTO group_members (group_id, user_id) VALUES (@groupId, @userId) ON CONFLICT DO NOTHING", new { groupId, userId }) == 1;
    }

    public async Task<bool> RemoveMemberAsync(string groupId, string userId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("DELETE FROM group_members WHERE group_id = @groupId AND user_id = @userId", new { groupId, userId }) == 1;
    }

    // ---- service accounts

    public async Task InsertServiceAccountAsync(ServiceAccountRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO service_accounts (id, name, key_hash, created_at) VALUES (@Id, @Name, @KeyHash, @CreatedAt)", row);
    }

    public async Task<IReadOnlyList<ServiceAccountRow>> ListServiceAccountsAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<ServiceAccountRow>("SELECT * FROM service_accounts ORDER BY name")).AsList();
    }

    public async Task<ServiceAccountRow?> FindServiceAccountAsync(string nameOrId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<ServiceAccountRow>("SELECT * FROM service_accounts WHERE id = @nameOrId OR name = @nameOrId", new { nameOrId });
    }

    public async Task<ServiceAccountRow?> FindServiceAccountByKeyAsync(string keyHash, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<ServiceAccountRow>("SELECT * FROM service_accounts WHERE key_hash = @keyHash", new { keyHash });
    }

    /// <summary>Removes a service account with its policies; its devices are removed and revoked until <paramref name="until"/>.</summary>
    public async Task DeleteServiceAccountAsync(string id, long revokedAt, long until, CancellationToken ct)
    {
        await InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM policies WHERE service_account_id = @id", new { id }, tx);
            await RevokeDevicesAsync(c, tx, "owner_id = @id", new { id, revokedAt, until });
            await c.ExecuteAsync("DELETE FROM service_accounts WHERE id = @id", new { id }, tx);
            return 0;
        }, ct);
    }

    // ---- policies

    public async Task InsertPolicyAsync(string id, string resourceId, string? groupId, string? serviceAccountId, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO policies (id, resource_id, group_id, service_account_id, created_at) VALUES (@id, @resourceId, @groupId, @serviceAccountId, @now)",
            new { id, resourceId, groupId, serviceAccountId, now });
    }

    public async Task<IReadOnlyList<PolicyRow>> ListPoliciesAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<PolicyRow>($"SELECT {PolicyColumns} {PolicyJoins} ORDER BY n.name, r.name")).AsList();
    }

    public async Task<int> DeletePolicyAsync(string id, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteAsync("DELETE FROM policies WHERE id = @id", new { id });
    }

    /// <summary>The resources granted to a user (through its groups) or to a service account.</summary>
    public async Task<IReadOnlyList<ResourceRow>> ListGrantedResourcesAsync(string ownerKind, string ownerId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        var sql = ownerKind == "user"
            ? $"""
               SELECT DISTINCT {ResourceColumns} FROM resources r JOIN networks n ON n.id = r.network_id
               JOIN policies p ON p.resource_id = r.id JOIN group_members m ON m.group_id = p.group_id
               WHERE m.user_id = @ownerId ORDER BY r.name
               """
            : $"""
               SELECT DISTINCT {ResourceColumns} FROM resources r JOIN networks n ON n.id = r.network_id
               JOIN policies p ON p.resource_id = r.id WHERE p.service_account_id = @ownerId ORDER BY r.name
               """;
        return (await c.QueryAsync<ResourceRow>(sql, new { ownerId })).AsList();
    }

    /// <summary>Who is granted which resource of one network: (owner "user/…" or "service-account/…", resource id) pairs.</summary>
    public async Task<IReadOnlyList<(string Owner, string ResourceId)>> ListNetworkGrantsAsync(string networkId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<(string Owner, string ResourceId)>("""
            SELECT 'user/' || m.user_id AS owner, p.resource_id FROM policies p
              JOIN group_members m ON m.group_id = p.group_id JOIN resources r ON r.id = p.resource_id
              WHERE r.network_id = @networkId
            UNION
            SELECT 'service-account/' || p.service_account_id AS owner, p.resource_id FROM policies p
              JOIN resources r ON r.id = p.resource_id
              WHERE p.service_account_id IS NOT NULL AND r.network_id = @networkId
            """, new { networkId })).AsList();
    }

    // ---- devices

    public async Task InsertDeviceAsync(DeviceRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("""
            INSERT INTO devices (id, name, owner_kind, owner_id, token_hash, token_expires_at, created_at)
            VALUES (@Id, @Name, @OwnerKind, @OwnerId, @TokenHash, @TokenExpiresAt, @CreatedAt)
            """, row);
    }

    public async Task<DeviceRow?> GetDeviceAsync(string id, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<DeviceRow>("SELECT * FROM devices WHERE id = @id", new { id });
    }

    public async Task<DeviceRow?> FindDeviceByTokenAsync(string tokenHash, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<DeviceRow>("SELECT * FROM devices WHERE token_hash = @tokenHash", new { tokenHash });
    }

    /// <summary>Devices with their owners' names, newest first.</summary>
    public async Task<List<DeviceListRow>> ListDevicesAsync(CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<DeviceListRow>("""
            SELECT d.id, d.name, d.owner_kind, d.owner_id, COALESCE(u.name, s.name) AS owner_name, d.token_expires_at, d.created_at,
              ds.last_seen AS session_seen, ds.paths
            FROM devices d
            LEFT JOIN device_sessions ds ON ds.device_id = d.id
            LEFT JOIN users u ON d.owner_kind = 'user' AND u.id = d.owner_id
            LEFT JOIN service_accounts s ON d.owner_kind = 'service-account' AND s.id = d.owner_id
            ORDER BY d.created_at DESC, d.id
            """)).AsList();
    }

    /// <summary>Records that a replica holds the device's client session now (so every replica can tell it is online).</summary>
    public async Task StartDeviceSessionAsync(string deviceId, string sessionId, string replica, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("""
            INSERT INTO device_sessions (device_id, session_id, replica, last_seen, paths) VALUES (@deviceId, @sessionId, @replica, @now, NULL)
            ON CONFLICT (device_id) DO UPDATE SET session_id = excluded.session_id, replica = excluded.replica, last_seen = excluded.last_seen, paths = NULL
            """, new { deviceId, sessionId, replica, now });
    }

    /// <summary>The device's session is still there (a heartbeat), with what its client last said of its paths when given.</summary>
    public async Task TouchDeviceSessionAsync(string deviceId, string sessionId, long now, string? paths, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync(paths is null
            ? "UPDATE device_sessions SET last_seen = @now WHERE device_id = @deviceId AND session_id = @sessionId"
            : "UPDATE device_sessions SET last_seen = @now, paths = @paths WHERE device_id = @deviceId AND session_id = @sessionId",
            new { deviceId, sessionId, now, paths });
    }

    /// <summary>The session ended; a newer one (on any replica) is left alone.</summary>
    public async Task EndDeviceSessionAsync(string deviceId, string sessionId, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM device_sessions WHERE device_id = @deviceId AND session_id = @sessionId", new { deviceId, sessionId });
    }

    /// <summary>Removes a device (its token stops working) and revokes its identity until <paramref name="until"/>; false when there was no such device.</summary>
    public async Task<bool> DeleteDeviceAsync(string id, long revokedAt, long until, CancellationToken ct)
        => await InTransactionAsync(async (c, tx) => await RevokeDevicesAsync(c, tx, "id = @id", new { id, revokedAt, until }) > 0, ct);

    private static async Task<int> RevokeDevicesAsync(DbConnection c, DbTransaction tx, string where, object args)
    {
        await c.ExecuteAsync($"DELETE FROM device_sessions WHERE device_id IN (SELECT id FROM devices WHERE {where})", args, tx);
        // Recorded before the rows go, so a certificate issued to the device is refused by connectors until it expires.
        await c.ExecuteAsync($"""
            INSERT INTO revoked_devices (id, revoked_at, until)
            SELECT id, @revokedAt, @until FROM devices WHERE {where}
            ON CONFLICT (id) DO UPDATE SET revoked_at = excluded.revoked_at, until = excluded.until
            """, args, tx);
        // Entries whose certificates have all expired protect nothing any more; without this the table only ever grows.
        await c.ExecuteAsync("DELETE FROM revoked_devices WHERE until <= @revokedAt", args, tx);
        await c.ExecuteAsync($"DELETE FROM mfa_sessions WHERE device_id IN (SELECT id FROM devices WHERE {where})", args, tx);
        return await c.ExecuteAsync($"DELETE FROM devices WHERE {where}", args, tx);
    }

    /// <summary>Identities ("device/dv_…") of removed devices whose certificates may still be valid at <paramref name="now"/>.</summary>
    public async Task<List<string>> ListRevokedDevicesAsync(long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<string>("SELECT 'device/' || id FROM revoked_devices WHERE until > @now ORDER BY id", new { now })).AsList();
    }

    // ---- audit

    public async Task AddAuditAsync(string actor, string action, string target, long now, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO audit (at, actor, action, target) VALUES (@now, @actor, @action, @target)", new { now, actor, action, target });
    }

    public async Task AddSecurityEventAsync(SecurityEventRow row, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO security_events (at, kind, subject, source, message) VALUES (@At, @Kind, @Subject, @Source, @Message)", row);
    }

    /// <summary>Security events, newest first; <paramref name="kind"/> and <paramref name="since"/> (unix ms) narrow them when given.</summary>
    public async Task<IReadOnlyList<SecurityEventRow>> ListSecurityEventsAsync(string? kind, long? since, int limit, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<SecurityEventRow>(
            "SELECT at, kind, subject, source, message FROM security_events WHERE at >= @since" + (kind is null ? "" : " AND kind = @kind") + " ORDER BY at DESC, id DESC LIMIT @limit",
            new { kind, since = since ?? 0L, limit })).AsList();
    }

    /// <summary>Events of <paramref name="kind"/> since <paramref name="since"/> (unix ms) about <paramref name="subject"/>, or from <paramref name="source"/>, whichever is given.</summary>
    public async Task<int> CountSecurityEventsAsync(string kind, string? subject, string? source, long since, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return await c.ExecuteScalarAsync<int>(
            "SELECT COUNT(*) FROM security_events WHERE kind = @kind AND at >= @since" + (subject is null ? "" : " AND subject = @subject") + (source is null ? "" : " AND source = @source"),
            new { kind, subject, source, since });
    }

    public async Task<IReadOnlyList<AuditRow>> ListAuditAsync(int limit, CancellationToken ct)
    {
        await using var c = await OpenAsync(ct);
        return (await c.QueryAsync<AuditRow>("SELECT at, actor, action, target FROM audit ORDER BY at DESC, id DESC LIMIT @limit", new { limit })).AsList();
    }
}
