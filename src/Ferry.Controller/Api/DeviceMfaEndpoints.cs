using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Core.Api;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Ferry.Controller.Api;

/// <summary>POST /v1/device/mfa: a signed-in device gives its user's second factor, authenticated by its own device token.</summary>
public static class DeviceMfaEndpoints
{
    public static void MapDeviceMfaApi(this IEndpointRouteBuilder app) => app.MapPost("/v1/device/mfa", ConfirmAsync);

    private static async Task<IResult> ConfirmAsync(HttpContext http, DeviceMfaRequest request, ControllerStore store, MfaSessions mfa, TimeProvider time, CancellationToken ct)
    {
        var header = http.Request.Headers.Authorization.ToString();
        var token = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..].Trim() : "";
        if (!token.StartsWith(TokenFormat.DevicePrefix, StringComparison.Ordinal))
        {
            return Results.Problem(statusCode: 401, title: "Device token required", detail: "send the device token as 'Authorization: Bearer …'; 'ferry client mfa' does this for the running client");
        }
        var device = await store.FindDeviceByTokenAsync(TokenFormat.Hash(token), ct);
        if (device is null || device.TokenExpiresAt < time.GetUtcNow().ToUnixTimeMilliseconds())
        {
            return Results.Problem(statusCode: 401, title: "Device token refused", detail: "the device token is unknown or expired (the device may have been removed): sign in again with 'ferry client up'");
        }
        var outcome = await mfa.ConfirmAsync(device, request.Code, ct);
        return outcome.Result is { } result
            ? Results.Ok(result)
            : Results.Problem(statusCode: outcome.Status, title: "Second factor refused", detail: outcome.Refusal);
    }
}
