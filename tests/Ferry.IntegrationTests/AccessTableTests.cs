using System.Text.Json;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 5 groundwork: a connector holds exactly its network's access table, kept current live; device certificates name their owner.</summary>
public sealed class AccessTableTests
{
    [Fact]
    public async Task Connector_gets_its_networks_access_table_and_every_policy_change_live()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-access-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("network", "create", "lab");
        await controller.AdminAsync("resource", "add", "db.corp.internal", "--network", "corp", "--name", "db", "--tcp", "5432");
        await controller.AdminAsync("resource", "add", "10.5.0.0/16", "--network", "lab", "--name", "lab-net");
        var account = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "app");
        var accountId = account.GetProperty("account").GetProperty("id").GetString();
        await controller.AdminAsync("policy", "grant", "lab-net", "--service-account", "app");

        var tables = new List<AccessMessage>();
        var changed = new SemaphoreSlim(0);
        var connector = TestPeers.Connector(controller, await controller.ProvisionAsync("corp", "c1", dir));
        connector.OnMessage = (message, _, _) =>
        {
            if (message is AccessMessage access)
            {
                lock (tables)
                {
                    tables.Add(access);
                }
                changed.Release();
            }
            return Task.CompletedTask;
        };
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var run = connector.RunAsync(stop.Token);

        // Only corp's resources, and nobody granted any of them yet (the grant is in another network).
        var first = await NextAsync(changed, tables);
        Assert.Equal(["db"], first.Resources.Select(r => r.Name));
        Assert.Empty(first.Grants);

        var policy = await controller.AdminJsonAsync<JsonElement>("policy", "grant", "db", "--service-account", "app");
        var granted = await NextAsync(changed, tables);
        var grant = Assert.Single(granted.Grants);
        Assert.Equal($"service-account/{accountId}", grant.Owner);
        Assert.Equal([first.Resources[0].Id], grant.ResourceIds);

        await controller.AdminAsync("policy", "revoke", policy.GetProperty("id").GetString()!);
        Assert.Empty((await NextAsync(changed, tables)).Grants);

        // The device's certificate says whose device it is, which is what the connector will check against this table.
        var device = await TestPeers.DeviceAsync(controller, account.GetProperty("key").GetString()!, stop.Token);
        var certificate = await TestPeers.WaitForAsync(() => device.Session.Certificate, "device certificate");
        Assert.Equal($"service-account/{accountId}", PeerIdentity.OwnerOf(certificate));
        Assert.Equal(device.Session.Identity, PeerIdentity.FromCertificate(certificate));

        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None);
    }

    private static async Task<AccessMessage> NextAsync(SemaphoreSlim changed, List<AccessMessage> tables)
    {
        Assert.True(await changed.WaitAsync(TimeSpan.FromSeconds(15)), "no access table arrived");
        lock (tables)
        {
            return tables[^1];
        }
    }
}
