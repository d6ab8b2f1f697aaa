using System.Net.Http.Json;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A device session held in the test process: signed in with a service account key, with its certificate and identity.</summary>
public sealed record TestDevice(ControllerSessionClient Session, Task<SessionOutcome> Run);

/// <summary>Peers that live in the test process and talk to a real controller, for tests that need their certificates or messages.</summary>
public static class TestPeers
{
    public static async Task<TestDevice> DeviceAsync(ControllerInstance controller, string serviceAccountKey, CancellationToken ct, Func<SessionMessage, Task>? onMessage = null)
    {
        using var http = controller.Http(withApiKey: false);
        var response = await http.PostAsJsonAsync("/v1/client/login", new ClientLoginRequest(null, null, serviceAccountKey, "test", null), ct);
        var login = (await response.Content.ReadFromJsonAsync<ClientLoginResult>(ct))!;
        var session = new ControllerSessionClient(ControllerEndpoints.Of(new Uri(controller.Url)), ControllerTrust.Create(controller.Fingerprint, null), TimeProvider.System);
        if (onMessage is not null)
        {
            session.OnMessage = (message, _, _) => onMessage(message);
        }
        var run = session.RunAsync(login.DeviceToken, ct);
        await WaitForAsync(() => session.Identity, "device welcome");
        return new TestDevice(session, run);
    }

    /// <summary>A connector session in this process, using the tokens file provisioning wrote.</summary>
    public static DaemonSessionLoop Connector(ControllerInstance controller, string tokensPath)
        => new(ControllerEndpoints.Of(new Uri(controller.Url)), ControllerTrust.Create(controller.Fingerprint, null), tokensPath, TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

    /// <summary>Polls until the probe yields a value (bounded to 30 s).</summary>
    public static async Task<T> WaitForAsync<T>(Func<T?> probe, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (probe() is { } value)
            {
                return value;
            }
            await Task.Delay(50);
        }
        throw new Xunit.Sdk.XunitException($"never got {what}");
    }
}
