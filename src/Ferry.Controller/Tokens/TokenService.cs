using Dapper;
using Ferry.Controller.Storage;
using Ferry.Core.Tokens;

namespace Ferry.Controller.Tokens;

/// <summary>Why a token was not accepted: a stable code, the HTTP status, and a message an operator can act on.</summary>
public sealed record Refusal(string Code, int Status, string Message);

/// <summary>A freshly issued pair, in plain text once, on its way to the daemon.</summary>
public sealed record IssuedTokens(TokenRow Row, string AccessToken, string RefreshToken, DateTimeOffset AccessExpiresAt);

/// <summary>Issues, rotates and checks daemon token pairs so that each pair has exactly one owner.</summary>
/// <remarks>
/// A rotated pair starts "pending": the old pair stays valid until the new one is first used (or reported saved), so a
/// daemon killed between receiving and saving new tokens can still come back with the old ones. Once the new pair is
/// confirmed the old refresh token is "used", and presenting it again is refused and logged as token reuse.
/// </remarks>
public sealed class TokenService(ControllerStore store, ControllerOptions options, TimeProvider time)
{
    public IssuedTokens NewPair(string ownerId, string state, string? parentId)
    {
        var access = TokenFormat.New(TokenFormat.AccessPrefix);
        var refresh = TokenFormat.New(TokenFormat.RefreshPrefix);
        var now = time.GetUtcNow();
        var expires = now.Add(options.AccessTokenLifetime);
        var row = new TokenRow
        {
            Id = TokenFormat.NewId("tk_"),
            OwnerId = ownerId,
            AccessHash = TokenFormat.Hash(access),
            AccessExpiresAt = expires.ToUnixTimeMilliseconds(),
            RefreshHash = TokenFormat.Hash(refresh),
            State = state,
            ParentId = parentId,
            CreatedAt = now.ToUnixTimeMilliseconds(),
        };
        return new IssuedTokens(row, access, refresh, expires);
    }

    /// <summary>Rotates a pair presented over HTTP (a daemon starting up). Refused when the pair was used already or its daemon holds a live session.</summary>
    public async Task<(IssuedTokens? Tokens, Refusal? Refusal, DaemonRow? Daemon)> RefreshAsync(string refreshToken, CancellationToken ct)
    {
        var row = await store.FindTokenByRefreshAsync(TokenFormat.Hash(refreshToken ?? ""), ct);
        if (row is null)
        {
            return (null, new Refusal("unknown-token", 401, "refresh token is not known to this controller: the daemon was removed or re-provisioned, or the token belongs to another deployment; provision it again"), null);
        }
        var daemon = await store.GetDaemonAsync(row.OwnerId, ct);
        if (daemon is null)
        {
            return (null, new Refusal("unknown-token", 401, "refresh token belongs to a daemon that was removed; provision it again"), null);
        }
        var now = time.GetUtcNow();
        var live = LiveSessionDescription(daemon, now);
        if (row.State is "used" or "revoked")
        {
            var usedAt = row.UsedAt is { } u ? DateTimeOffset.FromUnixTimeMilliseconds(u).ToString("u") : "an earlier rotation";
            var message = $"refresh token of {daemon.Kind} '{daemon.Name}' ({daemon.Id}) was already used at {usedAt}; "
                + (live is not null
                    ? $"the {daemon.Kind} is in use by another process {live}. Tokens are single-owner: stop the copy, or remove and re-provision the {daemon.Kind} if its tokens leaked"
                    : $"this tokens file is stale (an older copy). Use the current one, or re-provision the {daemon.Kind}");
            await store.AddEventAsync(daemon.Id, "token-reuse", message, now.ToUnixTimeMilliseconds(), ct);
            return (null, new Refusal("token-reused", 409, message), daemon);
        }
        if (live is not null)
        {
            var message = $"{daemon.Kind} '{daemon.Name}' ({daemon.Id}) is already in use by another process {live}; tokens are single-owner, so this process is refused and the running one keeps working";
            await store.AddEventAsync(daemon.Id, "token-in-use", message, now.ToUnixTimeMilliseconds(), ct);
            return (null, new Refusal("in-use", 409, message), daemon);
        }
        var issued = NewPair(row.OwnerId, "pending", row.Id);
        await store.InTransactionAsync(async (c, tx) =>
        {
            // Only the newest unconfirmed successor of a pair is kept.
            await c.ExecuteAsync("DELETE FROM tokens WHERE parent_id = @id AND state = 'pending'", new { id = row.Id }, tx);
            await ControllerStore.InsertTokenAsync(c, tx, issued.Row);
            return 0;
        }, ct);
        return (issued, null, daemon);
    }

    /// <summary>Checks an access token presented to open a session.</summary>
    public async Task<(TokenRow? Row, Refusal? Refusal)> AuthenticateAccessAsync(string accessToken, CancellationToken ct)
    {
        var row = await store.FindTokenByAccessAsync(TokenFormat.Hash(accessToken), ct);
        if (row is null)
        {
            return (null, new Refusal("unknown-token", 401, "access token is not known to this controller: the daemon was removed or re-provisioned; provision it again"));
        }
        if (row.State is "used" or "revoked")
        {
            return (null, new Refusal("token-replaced", 401, "access token was replaced by a newer rotation; another process may hold this daemon's current tokens"));
        }
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        if (row.AccessExpiresAt < now)
        {
            return (null, new Refusal("token-expired", 401, $"access token expired at {DateTimeOffset.FromUnixTimeMilliseconds(row.AccessExpiresAt):u}; the daemon must refresh it with its refresh token"));
        }
        return (row, null);
    }

    /// <summary>Makes a pending pair the owner's only valid one, retiring its predecessor (whose refresh token is then "used").</summary>
    public async Task ConfirmAsync(TokenRow row, CancellationToken ct)
    {
        if (row.State != "pending")
        {
            return;
        }
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        await store.InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("UPDATE tokens SET state = 'active' WHERE id = @id", new { id = row.Id }, tx);
            await c.ExecuteAsync("UPDATE tokens SET state = 'used', used_at = @now WHERE id = @parent AND state IN ('active', 'pending')", new { parent = row.ParentId, now }, tx);
            await c.ExecuteAsync("UPDATE tokens SET state = 'revoked', used_at = @now WHERE owner_id = @owner AND id <> @id AND state IN ('active', 'pending')",
                new { owner = row.OwnerId, id = row.Id, now }, tx);
            return 0;
        }, ct);
        row.State = "active";
    }

    /// <summary>Rotates over a live session, on the session holder's request; the new pair is pending until the daemon reports it saved.</summary>
    public async Task<IssuedTokens> RotateForSessionAsync(TokenRow current, CancellationToken ct)
    {
        var issued = NewPair(current.OwnerId, "pending", current.Id);
        await store.InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync("DELETE FROM tokens WHERE parent_id = @id AND state = 'pending'", new { id = current.Id }, tx);
            await ControllerStore.InsertTokenAsync(c, tx, issued.Row);
            return 0;
        }, ct);
        return issued;
    }

    /// <summary>Describes the live session holding a daemon ("since … from …"), or null when none is live.</summary>
    public string? LiveSessionDescription(DaemonRow daemon, DateTimeOffset now)
    {
        if (daemon.SessionId is null || daemon.LastSeen is null)
        {
            return null;
        }
        var staleBefore = now - (options.HeartbeatInterval * 3);
        if (daemon.LastSeen < staleBefore.ToUnixTimeMilliseconds())
        {
            return null;
        }
        var since = DateTimeOffset.FromUnixTimeMilliseconds(daemon.SessionStartedAt ?? daemon.LastSeen.Value).ToString("u");
        return $"since {since} from {daemon.SessionFrom ?? "an unknown address"}";
    }
}
