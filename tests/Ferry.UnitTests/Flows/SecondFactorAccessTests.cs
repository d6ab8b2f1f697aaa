using System.Text;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

/// <summary>The connector's side of networks that require a second factor: device-keyed grants, the refusal's words, the activity it reports.</summary>
public sealed class SecondFactorAccessTests
{
    private static readonly ResourceGrant Db = new("rs_db", "db", "corp", "db.corp.internal", "5432", "none");

    [Fact]
    public void A_device_without_a_live_second_factor_is_told_how_to_give_one()
    {
        var table = new AccessTable([new AccessEntry("", Db), new AccessEntry("device/dv_ok", Db)]) { NetworkName = "corp", RequiresSecondFactor = true };

        Assert.True(table.Check("device/dv_ok", FlowProtocol.Tcp, "db.corp.internal", 5432).IsAllowed);
        var locked = table.Check("device/dv_other", FlowProtocol.Tcp, "db.corp.internal", 5432);
        Assert.Equal(FlowStatus.Denied, locked.Status);
        Assert.Contains("network 'corp' requires a second factor", locked.Message, StringComparison.Ordinal);
        Assert.Contains("run 'ferry client mfa'", locked.Message, StringComparison.Ordinal);

        // Without the requirement, the plain refusal stays as it was.
        var plain = new AccessTable([new AccessEntry("", Db)]) { NetworkName = "corp" };
        Assert.DoesNotContain("second factor", plain.Check("user/us_1", FlowProtocol.Tcp, "db.corp.internal", 5432).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void New_fields_round_trip_and_an_older_peer_reads_them_as_absent()
    {
        SessionMessage[] messages =
        [
            new ActivityMessage(["device/dv_1", "device/dv_2"]),
            new AccessMessage([Db], [new OwnerGrants("device/dv_1", ["rs_db"])], [], new NetworkSettings("corp", null, false, RequireMfa: true)),
            new ResourcesMessage([Db with { Locked = "network 'corp' requires a second factor" }]),
        ];
        foreach (var message in messages)
        {
            var text = SessionMessage.Serialize(message);
            Assert.Equal(text, SessionMessage.Serialize(SessionMessage.Deserialize(Encoding.UTF8.GetBytes(text))!));
        }
        // A message from a controller that knows nothing of second factors: no requirement, nothing locked.
        var old = (AccessMessage)SessionMessage.Deserialize("""{"type":"access","resources":[],"grants":[],"network":{"name":"corp","exit":false}}"""u8)!;
        Assert.False(old.Network!.RequireMfa);
        Assert.DoesNotContain("locked", SessionMessage.Serialize(new ResourcesMessage([Db])), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_activity_stream_reports_bytes_either_way_but_not_an_end_of_stream()
    {
        var ct = TestContext.Current.CancellationToken;
        var marks = 0;
        await using var inner = new MemoryStream();
        await using var stream = new ActivityStream(inner, () => marks++);
        await stream.WriteAsync("abc"u8.ToArray(), ct);
        Assert.Equal(1, marks);
        await stream.WriteAsync(ReadOnlyMemory<byte>.Empty, ct);
        Assert.Equal(1, marks);
        inner.Position = 0;
        var buffer = new byte[8];
        Assert.Equal(3, await stream.ReadAsync(buffer, ct));
        Assert.Equal(2, marks);
        Assert.Equal(0, await stream.ReadAsync(buffer, ct));
        Assert.Equal(2, marks);
    }
}
