using System.Net;
using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using Ferry.Core.Api;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.Extensions.Logging;

namespace Ferry.Core.ControlPlane;

/// <summary>A token the controller will never accept again (reused, unknown, removed): the daemon cannot recover by retrying.</summary>
public sealed class TokensRejectedException(string message) : Exception(message);

/// <summary>
/// What every provisioned daemon (connector, relay) does with the controller: rotate its token pair at start and save it
/// atomically, hold one session, rotate again over the session when due, and reconnect with backoff when the session ends.
/// </summary>
public sealed partial class DaemonSessionLoop(ControllerEndpoints controllers, ControllerTrust trust, string tokensPath, TimeProvider clock, ILogger logger)
{
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);
    private TokenFile _tokens = TokenFile.Read(tokensPath);

    public ControllerSessionClient Session { get; } = new(controllers, trust, clock);

    public TokenFile Tokens => _tokens;

    /// <summary>Called for messages the loop does not handle itself.</summary>
    public Func<SessionMessage, SessionSocket, CancellationToken, Task>? OnMessage { get; set; }

    /// <summary>Called once each session is accepted.</summary>
    public Func<WelcomeMessage, SessionSocket, CancellationToken, Task>? OnWelcome { get; set; }

    // Written by the session loop, read by status and readiness on other threads: references, so no read is torn.
    private volatile StrongBox<DateTimeOffset>? _connectedSince;
    private volatile Tuple<string, DateTimeOffset>? _lastError;

    /// <summary>Since when the current session is up; null while there is none.</summary>
    public DateTimeOffset? ConnectedSince
    {
        get => _connectedSince?.Value;
        private set => _connectedSince = value is { } v ? new StrongBox<DateTimeOffset>(v) : null;
    }

    /// <summary>Why the last session ended or could not start ("code: reason"), and when; null before any failure.</summary>
    public (string Error, DateTimeOffset At)? LastError
    {
        get => _lastError is { } e ? (e.Item1, e.Item2) : null;
        private set => _lastError = value is { } v ? Tuple.Create(v.Error, v.At) : null;
    }

    /// <summary>The controller URL sessions and refreshes use now.</summary>
    public Uri CurrentController => controllers.Current;

    /// <summary>This daemon's status for its control socket ('ferry status'): the session part from here, the rest from the daemon.</summary>
    public Operations.DaemonStatus Status(string[] relayLinks, int flows, string[] listeners, IReadOnlyDictionary<string, long>? counters) => new(
        _tokens.Kind,
        Session.Identity ?? $"{_tokens.Kind}/{_tokens.Id}",
        _tokens.Name,
        CurrentController.ToString(),
        ConnectedSince is not null,
        ConnectedSince,
        LastError?.Error,
        LastError?.At,
        relayLinks,
        flows,
        listeners,
        counters);

    /// <summary>Runs until cancelled, then returns; throws <see cref="TokensRejectedException"/> when the tokens are dead for good.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        try
        {
            await RunSessionsAsync(ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Asked to stop: not an error.
        }
    }

    private async Task RunSessionsAsync(CancellationToken ct)
    {
        using var http = new HttpClient(trust.CreateHandler()) { Timeout = TimeSpan.FromSeconds(15) };
        Session.OnWelcome = async (welcome, socket, sct) =>
        {
            LogOnline(logger, welcome.Identity, welcome.TimeOffsetMs);
            ConnectedSince = clock.GetUtcNow();
            // Rotate over the session when less than half the access token's life is left.
            if (_tokens.AccessTokenExpiresAt - clock.GetUtcNow() < TimeSpan.FromMinutes(30))
            {
                await socket.SendAsync(new RotateTokensMessage(), sct);
            }
            if (OnWelcome is not null)
            {
                await OnWelcome(welcome, socket, sct);
            }
        };
        Session.OnMessage = async (message, socket, sct) =>
        {
            if (message is TokensRotatedMessage rotated)
            {
                _tokens = _tokens with { AccessToken = rotated.AccessToken, AccessTokenExpiresAt = rotated.AccessTokenExpiresAt, RefreshToken = rotated.RefreshToken };
                _tokens.Save(tokensPath);
                LogTokensSaved(logger, tokensPath);
                // Only now may the controller retire the old pair: it is safely replaced on disk.
                await socket.SendAsync(new TokensSavedMessage(rotated.AccessToken), sct);
            }
            else if (OnMessage is not null)
            {
                await OnMessage(message, socket, sct);
            }
        };

        var refreshNeeded = true;
        var backoff = TimeSpan.FromSeconds(1);
        while (!ct.IsCancellationRequested)
        {
            if (refreshNeeded || _tokens.AccessTokenExpiresAt - clock.GetUtcNow() < TimeSpan.FromMinutes(1))
            {
                if (!await RefreshAsync(http, ct))
                {
                    await DelayAsync(backoff, ct);
                    backoff = Next(backoff);
                    continue;
                }
                refreshNeeded = false;
            }
            var outcome = await Session.RunAsync(_tokens.AccessToken, ct);
            ConnectedSince = null;
            LastError = ($"{outcome.Code}: {outcome.Reason}", clock.GetUtcNow());
            if (outcome.Refused)
            {
                LogRefused(logger, outcome.Code, outcome.Reason);
                if (outcome.Code is "unknown-token" or "token-replaced" or "unknown-daemon")
                {
                    throw new TokensRejectedException(outcome.Reason);
                }
                refreshNeeded = outcome.Code == "token-expired";
                // A clock or ownership problem may be fixed outside this process; keep trying, slowly.
                backoff = TimeSpan.FromSeconds(Math.Max(backoff.TotalSeconds, 5));
            }
            else if (!ct.IsCancellationRequested)
            {
                LogSessionEnded(logger, outcome.Code, outcome.Reason, backoff);
            }
            await DelayAsync(backoff, ct);
            backoff = outcome.Code == "closed" ? TimeSpan.FromSeconds(1) : Next(backoff);
        }
    }

    /// <summary>Rotates the pair over HTTP (at every start, so a copied tokens file is stale the moment this one runs).</summary>
    private async Task<bool> RefreshAsync(HttpClient http, CancellationToken ct)
    {
        HttpResponseMessage response;
        var controller = controllers.Current;
        try
        {
            response = await http.PostAsJsonAsync(new Uri(controller, "/v1/daemon/refresh"), new TokenRefreshRequest(_tokens.RefreshToken), ct);
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is HttpRequestException or TaskCanceledException)
        {
            controllers.MoveNext(controller);
            LastError = ($"unreachable: cannot reach the controller at {controller}: {e.Message}", clock.GetUtcNow());
            LogSessionEnded(logger, "unreachable", $"cannot reach the controller at {controller}: {e.Message}", TimeSpan.Zero);
            return false;
        }
        using (response)
        {
            if (response.IsSuccessStatusCode)
            {
                var fresh = await response.Content.ReadFromJsonAsync<TokenFile>(ct) ?? throw new InvalidDataException("empty refresh answer");
                _tokens = _tokens with { AccessToken = fresh.AccessToken, AccessTokenExpiresAt = fresh.AccessTokenExpiresAt, RefreshToken = fresh.RefreshToken, Name = fresh.Name ?? _tokens.Name, Network = fresh.Network ?? _tokens.Network };
                _tokens.Save(tokensPath);
                LogTokensSaved(logger, tokensPath);
                return true;
            }
            var problem = await ApiProblem.ReadAsync(response, ct);
            LastError = ($"{problem.Title}: {problem.Detail}", clock.GetUtcNow());
            if (response.StatusCode == HttpStatusCode.Conflict && problem.Title == "in-use")
            {
                LogRefused(logger, problem.Title, problem.Detail);
                return false;
            }
            if ((int)response.StatusCode is >= 400 and < 500)
            {
                throw new TokensRejectedException(problem.Detail);
            }
            return false;
        }
    }

    private async Task DelayAsync(TimeSpan delay, CancellationToken ct)
    {
        try
        {
            await Task.Delay(delay, clock, ct);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static TimeSpan Next(TimeSpan backoff) => TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, MaxBackoff.Ticks));

    [LoggerMessage(1001, LogLevel.Information, "Tokens rotated and saved to {Path}")]
    private static partial void LogTokensSaved(ILogger logger, string path);

    [LoggerMessage(1002, LogLevel.Information, "Online as {Identity} (clock offset {OffsetMs} ms)")]
    private static partial void LogOnline(ILogger logger, string identity, long offsetMs);

    [LoggerMessage(1003, LogLevel.Error, "Refused by the controller ({Code}): {Reason}")]
    private static partial void LogRefused(ILogger logger, string code, string reason);

    [LoggerMessage(1004, LogLevel.Warning, "Session ended ({Code}): {Reason}; reconnecting in {Delay}")]
    private static partial void LogSessionEnded(ILogger logger, string code, string reason, TimeSpan delay);
}
