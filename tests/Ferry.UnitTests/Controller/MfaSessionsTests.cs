using Ferry.Controller.Policy;
using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Core.Security;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.UnitTests.Controller;

/// <summary>Second factors against a real SQLite store and a fake clock: who is locked, what a code unlocks, and when it lapses.</summary>
public sealed class MfaSessionsTests : IAsyncLifetime
{
    private const int IdleSeconds = 60;
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-mfa-").FullName;
    private readonly FakeTimeProvider _time = new(DateTimeOffset.Parse("2026-05-01T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
    private Database _database = null!;
    private ControllerStore _store = null!;
    private PolicyEvaluator _policy = null!;
    private MfaSessions _mfa = null!;
    private byte[] _secret = [];
    private NetworkRow _network = null!;
    private DeviceRow _device = null!;

    public async ValueTask InitializeAsync()
    {
        _database = Database.Create(_directory, null);
        await _database.MigrateAsync(CancellationToken.None);
        _store = new ControllerStore(_database);
        _policy = new PolicyEvaluator(_store, _time);
        _mfa = new MfaSessions(_store, new SessionRegistry(new ReplicaBus(), new Ferry.Controller.ControllerOptions()), _time, NullLogger<MfaSessions>.Instance);
        var now = _time.GetUtcNow().ToUnixTimeMilliseconds();
        var ct = CancellationToken.None;
        await _store.InsertNetworkAsync(new NetworkRow { Id = "net_1", Name = "corp", CreatedAt = now }, ct);
        await _store.SetNetworkMfaAsync("net_1", IdleSeconds, ct);
        await _store.InsertResourceAsync(new ResourceRow { Id = "rs_1", NetworkId = "net_1", Name = "db", Address = "db.corp.internal", Kind = "dns", Tcp = "5432", Udp = "none", CreatedAt = now }, ct);
        await _store.InsertUserAsync(new UserRow { Id = "us_1", Name = "alice", PasswordHash = "x", CreatedAt = now }, ct);
        await _store.InsertGroupAsync(new NamedRow { Id = "gr_1", Name = "eng", CreatedAt = now }, ct);
        await _store.AddMemberAsync("gr_1", "us_1", ct);
        await _store.InsertPolicyAsync("po_1", "rs_1", "gr_1", null, now, ct);
        _device = new DeviceRow { Id = "dv_1", Name = "laptop", OwnerKind = "user", OwnerId = "us_1", TokenHash = "h1", TokenExpiresAt = now + 3_600_000, CreatedAt = now };
        await _store.InsertDeviceAsync(_device, ct);
        _secret = Totp.NewSecret();
        await _store.SetUserTotpAsync("us_1", Totp.ToBase32(_secret), now, ct);
        _network = (await _store.FindNetworkAsync("net_1", ct))!;
    }

    public async ValueTask DisposeAsync()
    {
        await _database.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    private string CodeNow() => Totp.Code(_secret, Totp.StepAt(_time.GetUtcNow()));

    private async Task<string[]> GranteesAsync() => [.. (await _policy.AccessForNetworkAsync("net_1", CancellationToken.None)).Grants.Select(g => g.Owner)];

    [Fact]
    public async Task A_device_is_locked_until_a_right_code_and_then_granted_by_device_identity()
    {
        var ct = CancellationToken.None;
        var grants = await _policy.GrantsForAsync("user", "us_1", "dv_1", ct);
        Assert.Contains("requires a second factor: run 'ferry client mfa'", grants.Single().Locked, StringComparison.Ordinal);
        var access = await _policy.AccessForNetworkAsync("net_1", ct);
        Assert.True(access.Network!.RequireMfa);
        Assert.Empty(access.Grants);
        Assert.NotNull(await _policy.SecondFactorRefusalAsync("dv_1", "user", "us_1", _network, ct));

        var wrong = await _mfa.ConfirmAsync(_device, CodeNow() == "000000" ? "111111" : "000000", ct);
        Assert.Equal(401, wrong.Status);
        Assert.Contains(await _store.ListEventsAsync("us_1", 10, ct), e => e.Kind == "mfa-failed" && !e.Message.Contains("000000", StringComparison.Ordinal));
        Assert.Equal(400, (await _mfa.ConfirmAsync(_device, "12ab56", ct)).Status);

        var code = CodeNow();
        var right = await _mfa.ConfirmAsync(_device, code, ct);
        Assert.Equal(200, right.Status);
        Assert.Equal("corp", right.Result!.Networks.Single().Network);
        Assert.Null((await _policy.GrantsForAsync("user", "us_1", "dv_1", ct)).Single().Locked);
        Assert.Equal(["device/dv_1"], await GranteesAsync());
        Assert.Null(await _policy.SecondFactorRefusalAsync("dv_1", "user", "us_1", _network, ct));

        // A code is good once.
        Assert.Equal(401, (await _mfa.ConfirmAsync(_device, code, ct)).Status);
    }

    [Fact]
    public async Task Traffic_keeps_the_second_factor_and_the_idle_threshold_ends_it()
    {
        var ct = CancellationToken.None;
        Assert.Equal(200, (await _mfa.ConfirmAsync(_device, CodeNow(), ct)).Status);

        // Traffic at 40 s; at 90 s the confirmation is older than the threshold but the traffic is not.
        _time.Advance(TimeSpan.FromSeconds(40));
        await _mfa.RecordActivityAsync("net_1", ["device/dv_1", "not an identity"], ct);
        _time.Advance(TimeSpan.FromSeconds(50));
        await _mfa.SweepAsync(ct);
        Assert.Equal(["device/dv_1"], await GranteesAsync());

        // Activity in another network does not count here.
        await _mfa.RecordActivityAsync("net_other", ["device/dv_1"], ct);
        _time.Advance(TimeSpan.FromSeconds(11));
        // Even before the sweep, the lapsed second factor no longer grants anything.
        Assert.Empty(await GranteesAsync());
        await _mfa.SweepAsync(ct);
        Assert.Empty(await _store.ListMfaSessionsAsync(null, null, ct));
        Assert.Contains("requires a second factor", (await _policy.GrantsForAsync("user", "us_1", "dv_1", ct)).Single().Locked, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Service_accounts_cannot_unlock_and_wrong_codes_are_limited()
    {
        var ct = CancellationToken.None;
        var robot = new DeviceRow { Id = "dv_2", Name = "ci", OwnerKind = "service-account", OwnerId = "sa_1", TokenHash = "h2", TokenExpiresAt = long.MaxValue, CreatedAt = 0 };
        Assert.Equal(400, (await _mfa.ConfirmAsync(robot, CodeNow(), ct)).Status);
        Assert.Contains("service account cannot give", await _policy.SecondFactorRefusalAsync("dv_2", "service-account", "sa_1", _network, ct), StringComparison.Ordinal);

        var wrong = CodeNow() == "000000" ? "111111" : "000000";
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(401, (await _mfa.ConfirmAsync(_device, wrong, ct)).Status);
        }
        // Past five wrong codes, even the right one is not checked until the window passes.
        Assert.Equal(429, (await _mfa.ConfirmAsync(_device, CodeNow(), ct)).Status);
        _time.Advance(TimeSpan.FromMinutes(6));
        Assert.Equal(200, (await _mfa.ConfirmAsync(_device, CodeNow(), ct)).Status);
    }

    [Fact]
    public async Task Resetting_the_factor_or_dropping_the_requirement_ends_live_second_factors()
    {
        var ct = CancellationToken.None;
        Assert.Equal(200, (await _mfa.ConfirmAsync(_device, CodeNow(), ct)).Status);
        await _store.SetUserTotpAsync("us_1", null, 0, ct);
        Assert.Empty(await GranteesAsync());
        Assert.Contains("has none enrolled", await _policy.SecondFactorRefusalAsync("dv_1", "user", "us_1", _network, ct), StringComparison.Ordinal);

        await _store.SetNetworkMfaAsync("net_1", null, ct);
        var access = await _policy.AccessForNetworkAsync("net_1", ct);
        Assert.False(access.Network!.RequireMfa);
        Assert.Equal(["user/us_1"], access.Grants.Select(g => g.Owner));
    }
}
