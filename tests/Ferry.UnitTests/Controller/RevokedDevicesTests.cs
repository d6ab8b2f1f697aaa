using Ferry.Controller.Storage;

namespace Ferry.UnitTests.Controller;

/// <summary>Removed devices stay refused while their certificates may be valid, and are forgotten after.</summary>
public sealed class RevokedDevicesTests : IAsyncLifetime
{
    private const long Hour = 3_600_000;
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-revoked-").FullName;
    private Database _database = null!;
    private ControllerStore _store = null!;

    public async ValueTask InitializeAsync()
    {
        _database = Database.Create(_directory, null);
        await _database.MigrateAsync(CancellationToken.None);
        _store = new ControllerStore(_database);
        await _store.InsertUserAsync(new UserRow { Id = "us_1", Name = "alice", PasswordHash = "x", CreatedAt = 0 }, CancellationToken.None);
        foreach (var id in new[] { "dv_1", "dv_2" })
        {
            await _store.InsertDeviceAsync(new DeviceRow { Id = id, Name = id, OwnerKind = "user", OwnerId = "us_1", TokenHash = id, TokenExpiresAt = 100 * Hour, CreatedAt = 0 }, CancellationToken.None);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _database.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task A_removed_device_is_listed_until_its_certificates_expire_and_its_row_is_pruned_by_a_later_removal()
    {
        var ct = CancellationToken.None;
        Assert.True(await _store.DeleteDeviceAsync("dv_1", revokedAt: 0, until: 12 * Hour, ct));
        Assert.Equal(["device/dv_1"], await _store.ListRevokedDevicesAsync(11 * Hour, ct));
        Assert.Empty(await _store.ListRevokedDevicesAsync(12 * Hour, ct));

        Assert.True(await _store.DeleteDeviceAsync("dv_2", revokedAt: 13 * Hour, until: 25 * Hour, ct));
        Assert.Equal(["device/dv_2"], await _store.ListRevokedDevicesAsync(13 * Hour, ct));
        // Listing filters by time either way; the row itself must be gone, or the table grows with every device ever removed.
        Assert.Equal(["dv_2"], await RowsAsync());
    }

    private async Task<List<string>> RowsAsync()
    {
        await using var c = await _database.OpenAsync();
        await using var command = c.CreateCommand();
        command.CommandText = "SELECT id FROM revoked_devices ORDER BY id";
        var ids = new List<string>();
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            ids.Add(reader.GetString(0));
        }
        return ids;
    }
}
