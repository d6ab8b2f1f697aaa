using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.Security;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 8, first part: operators of the admin console, each with a password and a TOTP secret shown once; the secret works
/// in an authenticator (its codes are the RFC 6238 ones), and bad input is refused with its reason.
/// </summary>
public sealed class OperatorTests
{
    [Fact]
    public async Task An_operator_is_created_with_a_totp_secret_shown_once_listed_audited_and_removed()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "a long operator password";
        var created = await FerryCli.RunAsync(["admin", "operator", "create", "ops", "--json"], env);
        Assert.True(created.ExitCode == 0, created.ToString());
        var answer = JsonSerializer.Deserialize<OperatorCreated>(created.Stdout, ControllerInstance.Json)!;
        Assert.Equal("ops", answer.Operator.Name);
        Assert.StartsWith("op_", answer.Operator.Id, StringComparison.Ordinal);
        var secret = Totp.FromBase32(answer.TotpSecret);
        Assert.NotNull(secret);
        Assert.Equal(20, secret.Length);
        Assert.Equal($"otpauth://totp/Ferry:ops?secret={answer.TotpSecret}&issuer=Ferry&algorithm=SHA1&digits=6&period=30", answer.TotpUri);

        // Listed without the secret or the password hash; nobody signed in yet.
        var listed = await controller.AdminAsync("operator", "list", "--json");
        Assert.DoesNotContain(answer.TotpSecret, listed, StringComparison.Ordinal);
        Assert.DoesNotContain("pbkdf2", listed, StringComparison.Ordinal);
        var operators = JsonSerializer.Deserialize<OperatorView[]>(listed, ControllerInstance.Json)!;
        Assert.Null(Assert.Single(operators).LastSignIn);

        // Bad input: a short password, a taken name, no password at all.
        env["FERRY_PASSWORD"] = "short";
        var weak = await FerryCli.RunAsync(["admin", "operator", "create", "ops2"], env);
        Assert.NotEqual(0, weak.ExitCode);
        Assert.Contains("at least 12 characters", weak.Stderr, StringComparison.Ordinal);
        env["FERRY_PASSWORD"] = "another long password";
        var taken = await FerryCli.RunAsync(["admin", "operator", "create", "ops"], env);
        Assert.Contains("an operator named 'ops' exists already", taken.Stderr, StringComparison.Ordinal);
        var none = await FerryCli.RunAsync(["admin", "operator", "create", "ops3"], controller.AdminEnv());
        Assert.Contains("give the password with --password-file or FERRY_PASSWORD", none.Stderr, StringComparison.Ordinal);

        await controller.AdminAsync("operator", "remove", "ops");
        Assert.Empty(JsonSerializer.Deserialize<OperatorView[]>(await controller.AdminAsync("operator", "list", "--json"), ControllerInstance.Json)!);
        var audit = await controller.AdminAsync("audit", "list", "--json");
        Assert.Contains("operator.create", audit, StringComparison.Ordinal);
        Assert.Contains("operator.remove", audit, StringComparison.Ordinal);
    }
}
