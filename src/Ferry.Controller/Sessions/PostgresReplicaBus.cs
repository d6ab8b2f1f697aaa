using System.Text;
using Dapper;
using Ferry.Controller.Storage;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Ferry.Controller.Sessions;

/// <summary>
/// Replicas on one PostgreSQL talk through LISTEN/NOTIFY on one channel, and prove they are alive by holding an advisory
/// lock named after their replica id on the listening connection: the lock goes with the connection, so a replica that
/// dies (even by SIGKILL) releases it at once, and another replica may take over its daemons without waiting for them to
/// go stale.
/// </summary>
public sealed partial class PostgresReplicaBus : ReplicaBus, IAsyncDisposable
{
    private const string Channel = "ferry_replicas";

    // The first key of the two-key advisory lock space, so Ferry's locks cannot collide with another program's on the same database.
    private const int LockSpace = 0x46455259; // "FERY"

    // NOTIFY payloads must stay under 8000 bytes.
    private const int MaxPayload = 7900;

    private static readonly TimeSpan ReconnectDelay = TimeSpan.FromSeconds(1);

    private readonly Database _database;
    private readonly string _replica;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private NpgsqlConnection? _listener;
    private Task? _loop;

    public PostgresReplicaBus(Database database, string replica, ILogger<PostgresReplicaBus> logger)
    {
        _database = database;
        _replica = replica;
        _logger = logger;
    }

    public override bool IsShared => true;

    /// <summary>Takes this replica's lock and starts listening; fails when another live replica already uses the same id.</summary>
    public async Task StartAsync(CancellationToken ct)
    {
        _listener = await ConnectAsync(ct);
        _loop = Task.Run(() => ListenAsync(_stop.Token), CancellationToken.None);
    }

    private async Task<NpgsqlConnection> ConnectAsync(CancellationToken ct)
    {
        var connection = (await _database.OpenListenerAsync(_replica, ct))!;
        try
        {
            var mine = await connection.ExecuteScalarAsync<bool>("SELECT pg_try_advisory_lock(@space, hashtext(@replica))", new { space = LockSpace, replica = _replica });
            if (!mine)
            {
                throw new ArgumentException($"another controller replica with id '{_replica}' is running on this database; give each replica its own --replica-id");
            }
            connection.Notification += OnNotification;
            await connection.ExecuteAsync($"LISTEN {Channel}");
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private async Task ListenAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await _listener!.WaitAsync(ct);
                continue;
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is NpgsqlException or IOException or InvalidOperationException or ObjectDisposedException)
            {
                LogLinkLost(_logger, e.Message);
            }
            await _listener!.DisposeAsync();
            _listener = null;
            while (_listener is null && !ct.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(ReconnectDelay, ct);
                    _listener = await ConnectAsync(ct);
                    LogLinkBack(_logger);
                    OnResynchronize();
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception e) when (e is NpgsqlException or IOException or TimeoutException or ArgumentException)
                {
                    // ArgumentException: our own lock is still held by the dead connection's backend until PostgreSQL notices it is gone.
                    LogReconnectFailed(_logger, e.Message);
                }
            }
        }
    }

    private void OnNotification(object sender, NpgsqlNotificationEventArgs e)
    {
        if (e.Channel != Channel || ReplicaNotice.TryParse(e.Payload) is not { } notice || notice.Origin == _replica)
        {
            return;
        }
        OnReceived(notice);
    }

    public override async Task PublishAsync(ReplicaNotice notice, CancellationToken ct)
    {
        var payload = notice.Serialize();
        if (Encoding.UTF8.GetByteCount(payload) > MaxPayload)
        {
            LogTooLarge(_logger, notice.Kind.ToString(), notice.Identity ?? "");
            return;
        }
        await using var connection = await _database.OpenAsync(ct);
        await connection.ExecuteAsync("SELECT pg_notify(@channel, @payload)", new { channel = Channel, payload });
    }

    public override async Task<bool> IsAliveAsync(string replica, CancellationToken ct)
    {
        if (replica == _replica)
        {
            return true;
        }
        // A transaction-scoped try: it takes the lock only when nobody holds it (the replica is gone), and lets go at once.
        await using var connection = await _database.OpenAsync(ct);
        await using var tx = await connection.BeginTransactionAsync(ct);
        var free = await connection.ExecuteScalarAsync<bool>("SELECT pg_try_advisory_xact_lock(@space, hashtext(@replica))", new { space = LockSpace, replica }, tx);
        await tx.RollbackAsync(ct);
        return !free;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_loop is not null)
        {
            try
            {
                await _loop;
            }
            catch (OperationCanceledException)
            {
            }
        }
        if (_listener is not null)
        {
            await _listener.DisposeAsync();
        }
        _stop.Dispose();
    }

    [LoggerMessage(160, LogLevel.Warning, "Lost the link to the other controller replicas (PostgreSQL LISTEN): {Reason}; reconnecting")]
    private static partial void LogLinkLost(ILogger logger, string reason);

    [LoggerMessage(161, LogLevel.Information, "Link to the other controller replicas is back; recomputing every session's view")]
    private static partial void LogLinkBack(ILogger logger);

    [LoggerMessage(162, LogLevel.Warning, "Cannot reach the other controller replicas yet: {Reason}")]
    private static partial void LogReconnectFailed(ILogger logger, string reason);

    [LoggerMessage(163, LogLevel.Error, "A {Kind} notice for {Identity} is too large for PostgreSQL NOTIFY and was not passed to the other replicas")]
    private static partial void LogTooLarge(ILogger logger, string kind, string identity);
}
