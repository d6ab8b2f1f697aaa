using System.Data.Common;
using Dapper;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Ferry.Controller.Storage;

/// <summary>Which SQL engine holds the controller's state.</summary>
public enum DatabaseKind
{
    Sqlite,
    Postgres,
}

/// <summary>Opens connections to the controller's database (SQLite file by default, PostgreSQL with --database) and creates its schema.</summary>
public sealed class Database : IAsyncDisposable
{
    private readonly string _sqliteConnectionString = "";
    private readonly NpgsqlDataSource? _postgres;
    private string? _postgresConnectionString;

    static Database()
    {
        // Columns are snake_case; row classes are PascalCase.
        DefaultTypeMap.MatchNamesWithUnderscores = true;
    }

    private Database(DatabaseKind kind, string description, string sqlite, NpgsqlDataSource? postgres)
    {
        Kind = kind;
        Description = description;
        _sqliteConnectionString = sqlite;
        _postgres = postgres;
    }

    public DatabaseKind Kind { get; }

    /// <summary>Where the state lives, without secrets, for logs.</summary>
    public string Description { get; }

    public static Database Create(string dataDirectory, string? postgresConnectionString)
    {
        if (!string.IsNullOrWhiteSpace(postgresConnectionString))
        {
            NpgsqlConnectionStringBuilder builder;
            try
            {
                builder = new NpgsqlConnectionStringBuilder(postgresConnectionString);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"--database is not a valid PostgreSQL connection string ({e.Message}); expected for example \"Host=db;Database=ferry;Username=ferry;Password=…\"", e);
            }
            var dataSource = NpgsqlDataSource.Create(builder.ConnectionString);
            return new Database(DatabaseKind.Postgres, $"PostgreSQL {builder.Host}/{builder.Database}", "", dataSource) { _postgresConnectionString = builder.ConnectionString };
        }
        Directory.CreateDirectory(dataDirectory);
        var file = Path.GetFullPath(Path.Combine(dataDirectory, "ferry.db"));
        var sqlite = new SqliteConnectionStringBuilder
        {
            DataSource = file,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
        return new Database(DatabaseKind.Sqlite, $"SQLite {file}", sqlite, null);
    }

    /// <summary>
    /// A connection of its own for LISTEN (PostgreSQL only; null otherwise), named after the replica and with TCP keepalive,
    /// so a dead database server is noticed while nothing is being asked of it.
    /// </summary>
    public async Task<NpgsqlConnection?> OpenListenerAsync(string replica, CancellationToken ct)
    {
        if (_postgresConnectionString is null)
        {
            return null;
        }
        var builder = new NpgsqlConnectionStringBuilder(_postgresConnectionString)
        {
            ApplicationName = $"ferry controller {replica}",
            Pooling = false,
            KeepAlive = 5,
        };
        var connection = new NpgsqlConnection(builder.ConnectionString);
        try
        {
            await connection.OpenAsync(ct);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
        return connection;
    }

    public async Task<DbConnection> OpenAsync(CancellationToken cancellationToken = default)
    {
        if (_postgres is not null)
        {
            return await _postgres.OpenConnectionAsync(cancellationToken);
        }
        var connection = new SqliteConnection(_sqliteConnectionString);
        await connection.OpenAsync(cancellationToken);
        // Enforced per connection in SQLite; busy_timeout lets concurrent writers wait instead of failing.
        await connection.ExecuteAsync("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;");
        return connection;
    }

    /// <summary>Creates the schema when missing; safe to run on every start and from several replicas.</summary>
    public async Task MigrateAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        if (Kind == DatabaseKind.Sqlite)
        {
            // WAL keeps the file consistent across kill -9 and lets readers run beside the writer.
            await connection.ExecuteAsync("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
        }
        var autoId = Kind == DatabaseKind.Sqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGSERIAL PRIMARY KEY";
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
        if (Kind == DatabaseKind.Postgres)
        {
            // Two replicas starting together must not race on CREATE TABLE.
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(7431001)", transaction: transaction);
        }
        await connection.ExecuteAsync(Schema.Replace("{AUTOID}", autoId, StringComparison.Ordinal), transaction: transaction);
        await transaction.CommitAsync(cancellationToken);
    }

    private const string Schema = """
        CREATE TABLE IF NOT EXISTS settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS networks (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            dns_server TEXT,
            is_exit INTEGER NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS daemons (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            network_id TEXT REFERENCES networks(id),
            location TEXT,
            created_at BIGINT NOT NULL,
            state TEXT NOT NULL DEFAULT 'offline',
            online_since BIGINT,
            offline_since BIGINT,
            last_seen BIGINT,
            time_offset_ms BIGINT,
            hostname TEXT,
            public_ip TEXT,
            private_ips TEXT,
            version TEXT,
            session_id TEXT,
            session_replica TEXT,
            session_started_at BIGINT,
            session_from TEXT,
            stun_status TEXT NOT NULL DEFAULT 'not-run',
            stun_mapped TEXT,
            stun_relays TEXT,
            stun_error TEXT,
            stun_at BIGINT,
            status TEXT,
            UNIQUE (kind, name));
        CREATE TABLE IF NOT EXISTS daemon_state_changes (
            id {AUTOID},
            daemon_id TEXT NOT NULL,
            state TEXT NOT NULL,
            at BIGINT NOT NULL,
            reason TEXT);
        CREATE INDEX IF NOT EXISTS ix_state_changes_daemon ON daemon_state_changes (daemon_id, at);
        CREATE TABLE IF NOT EXISTS events (
            id {AUTOID},
            subject_id TEXT NOT NULL,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS ix_events_subject ON events (subject_id, at);
        CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY,
            owner_id TEXT NOT NULL,
            access_hash TEXT NOT NULL UNIQUE,
            access_expires_at BIGINT NOT NULL,
            refresh_hash TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            parent_id TEXT,
            created_at BIGINT NOT NULL,
            used_at BIGINT);
        CREATE INDEX IF NOT EXISTS ix_tokens_owner ON tokens (owner_id);
        CREATE TABLE IF NOT EXISTS resources (
            id TEXT PRIMARY KEY,
            network_id TEXT NOT NULL REFERENCES networks(id),
            name TEXT NOT NULL UNIQUE,
            address TEXT NOT NULL,
            kind TEXT NOT NULL,
            tcp TEXT NOT NULL,
            udp TEXT NOT NULL,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS operators (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            totp_secret TEXT NOT NULL,
            totp_last_step BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            last_sign_in BIGINT);
        CREATE TABLE IF NOT EXISTS users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS user_groups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS group_members (
            group_id TEXT NOT NULL REFERENCES user_groups(id),
            user_id TEXT NOT NULL REFERENCES users(id),
            PRIMARY KEY (group_id, user_id));
        CREATE TABLE IF NOT EXISTS service_accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            key_hash TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS policies (
            id TEXT PRIMARY KEY,
            resource_id TEXT NOT NULL REFERENCES resources(id),
            group_id TEXT REFERENCES user_groups(id),
            service_account_id TEXT REFERENCES service_accounts(id),
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS devices (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            owner_kind TEXT NOT NULL,
            owner_id TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            token_expires_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS device_sessions (
            device_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            replica TEXT NOT NULL,
            last_seen BIGINT NOT NULL,
            paths TEXT);
        CREATE TABLE IF NOT EXISTS revoked_devices (
            id TEXT PRIMARY KEY,
            revoked_at BIGINT NOT NULL,
            until BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS network_mfa (
            network_id TEXT PRIMARY KEY,
            idle_timeout_s BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS user_totp (
            user_id TEXT PRIMARY KEY,
            totp_secret TEXT NOT NULL,
            totp_last_step BIGINT NOT NULL DEFAULT 0,
            enrolled_at BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS mfa_sessions (
            device_id TEXT NOT NULL,
            network_id TEXT NOT NULL,
            confirmed_at BIGINT NOT NULL,
            last_activity BIGINT NOT NULL,
            PRIMARY KEY (device_id, network_id));
        CREATE TABLE IF NOT EXISTS audit (
            id {AUTOID},
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS security_events (
            id {AUTOID},
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            source TEXT,
            message TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS ix_security_events_at ON security_events (at);
        CREATE INDEX IF NOT EXISTS ix_security_events_kind_subject ON security_events (kind, subject, at);
        CREATE INDEX IF NOT EXISTS ix_security_events_kind_source ON security_events (kind, source, at);
        """;

    public async ValueTask DisposeAsync()
    {
        if (_postgres is not null)
        {
            await _postgres.DisposeAsync();
        }
        else
        {
            SqliteConnection.ClearAllPools();
        }
    }
}
