using System.Text.Json;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;

namespace Ferry.Controller.Sessions;

/// <summary>The relays peers should use: those online with endpoints they reported.</summary>
public sealed class RelayDirectory(ControllerStore store, TokenService tokens, TimeProvider time)
{
    public async Task<RelayInfo[]> OnlineAsync(CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var result = new List<RelayInfo>();
        foreach (var relay in await store.ListDaemonsAsync(PeerIdentity.Relay, null, ct))
        {
            if (relay.State != "online" || tokens.LiveSessionDescription(relay, now) is null || relay.Status is null)
            {
                continue;
            }
            var status = JsonSerializer.Deserialize<RelayStatusMessage>(relay.Status, StatusJson);
            if (status is null || status.TcpEndpoints.Length == 0)
            {
                continue;
            }
            result.Add(new RelayInfo(relay.Id, relay.Name, relay.Location, status.TcpEndpoints, status.StunEndpoints));
        }
        return [.. result];
    }

    public static readonly JsonSerializerOptions StatusJson = new(JsonSerializerDefaults.Web);
}
