using Npgsql;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>Which store a test's controller uses.</summary>
public enum StoreKind
{
    Sqlite,
    Postgres,
}

/// <summary>A throw-away database for one controller: nothing (SQLite lives in the data folder) or a fresh PostgreSQL database, dropped afterwards.</summary>
public sealed class TestDatabase : IAsyncDisposable
{
    /// <summary>Connection string of a PostgreSQL role allowed to create databases; .ci/run sets it after starting a local server.</summary>
    public static string? PostgresAdmin => Environment.GetEnvironmentVariable("FERRY_TEST_POSTGRES") is { Length: > 0 } s ? s : null;

    private readonly string? _name;

    private TestDatabase(string? connectionString, string? name)
    {
        ConnectionString = connectionString;
        _name = name;
    }

    /// <summary>The --database value, or null for SQLite.</summary>
    public string? ConnectionString { get; }

    public static async Task<TestDatabase> CreateAsync(StoreKind kind)
    {
        if (kind == StoreKind.Sqlite)
        {
            return new TestDatabase(null, null);
        }
        if (PostgresAdmin is null)
        {
            Assert.Skip("PostgreSQL tests need FERRY_TEST_POSTGRES (a connection string of a role with CREATEDB); .ci/run installs, starts and sets it");
        }
        var name = "ferry_test_" + Guid.NewGuid().ToString("N")[..12];
        await using (var admin = new NpgsqlConnection(PostgresAdmin))
        {
            await admin.OpenAsync();
            await using var create = new NpgsqlCommand($"CREATE DATABASE {name}", admin);
            await create.ExecuteNonQueryAsync();
        }
        var builder = new NpgsqlConnectionStringBuilder(PostgresAdmin) { Database = name };
        return new TestDatabase(builder.ConnectionString, name);
    }

    public async ValueTask DisposeAsync()
    {
        if (_name is null || PostgresAdmin is null)
        {
            return;
        }
        NpgsqlConnection.ClearAllPools();
        await using var admin = new NpgsqlConnection(PostgresAdmin);
        await admin.OpenAsync();
        await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS {_name} WITH (FORCE)", admin);
        // FORCE cannot end a backend that another role's process (an autovacuum worker) holds for a moment; a few tries suffice.
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await drop.ExecuteNonQueryAsync();
                return;
            }
            catch (PostgresException e) when (e.SqlState is "42501" or "55006" && attempt < 25)
            {
                await Task.Delay(200);
            }
        }
    }
}
