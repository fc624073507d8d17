// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title OpenLoRAToken: the devnet payment token (ERC-20 with EIP-2612 permit).
/// @notice Settlement works with any ERC-20 chosen at deployment; this one exists so that a local devnet has a
///         token whose supply its owner can mint to demo accounts. Not meant for a public network.
contract OpenLoRAToken is ERC20, ERC20Permit, Ownable {
    constructor(address initialOwner) ERC20("OpenLoRA Devnet USD", "oUSD") ERC20Permit("OpenLoRA Devnet USD")
        Ownable(initialOwner)
    {}

    /// @notice Mint `amount` to `to` (owner only: the devnet faucet).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
